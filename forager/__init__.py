"""Forager: an open gym for training and evaluating software-engineering agents with RL.

`import forager` is light (no gymnasium, docker or numpy); it registers `forager/SWE-v0` with
gymnasium as soon as gymnasium is imported, and the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from forager.registration import SWE_ENV_ID, register_when_gymnasium_loads

__version__ = "0.1.0"
ENV_ID = SWE_ENV_ID

_LAZY = {
    "Observation": "forager.core",
    "Task": "forager.core",
    "ToolCall": "forager.core",
    "Trajectory": "forager.core",
    "load_tasks": "forager.tasks.store",
    "SWEEnv": "forager.envs.swe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'forager' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


register_when_gymnasium_loads()

__all__ = ["ENV_ID", "Observation", "SWEEnv", "Task", "ToolCall", "Trajectory", "load_tasks", "__version__"]
