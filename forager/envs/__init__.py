"""Gymnasium environments. `forager/SWE-v0` is registered on import of `forager.envs`."""

import gymnasium

from forager.envs.swe import SWEEnv, open_runtime
from forager.envs.tools import TOOLS, ActionError, ToolCall, parse_action

ENV_ID = "forager/SWE-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="forager.envs.swe:SWEEnv", nondeterministic=True)

__all__ = ["ENV_ID", "TOOLS", "ActionError", "SWEEnv", "ToolCall", "open_runtime", "parse_action"]
