"""Policies: given the conversation so far, the next assistant message with its tokens.

`make_policy(name, **options)` builds one by short name; backends are imported only when used, so
the reference policy needs neither an HTTP client nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from forager.core import ForagerError, Policy
from forager.policies.reference import ReferencePolicy, reference_actions

POLICIES = {
    "reference": "forager.policies.reference:ReferencePolicy",
    "replay": "forager.policies.replay:ReplayPolicy",
    "openai": "forager.policies.openai:OpenAIPolicy",
    "hf": "forager.policies.hf:HFPolicy",
}


def make_policy(name: str, **options: Any) -> Policy:
    """A policy by short name (`reference`, `replay`, `openai`, `hf`) or `module:Class` dotted path."""
    target = POLICIES.get(name, name)
    if ":" not in target:
        raise ForagerError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)} or a `module:Class` path")
    module_name, _, attribute = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except ImportError as err:
        extra = {"hf": " (install the `train` extra: pip install 'forager[train]')"}.get(name, "")
        raise ForagerError(f"policy {name!r} cannot be loaded: {err}{extra}") from err
    except AttributeError as err:
        raise ForagerError(f"policy {name!r}: {module_name} has no {attribute}") from err
    try:
        return cls(**options)
    except TypeError as err:
        raise ForagerError(f"policy {name!r} does not take these options: {err}") from err


__all__ = ["POLICIES", "ReferencePolicy", "make_policy", "reference_actions"]
