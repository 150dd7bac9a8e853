"""Gymnasium environments. `forager/SWE-v0` is registered once gymnasium is imported (see forager.registration)."""

from forager.core import ToolCall
from forager.envs.swe import SWEEnv
from forager.envs.tools import TOOLS, ActionError, parse_action
from forager.registration import SWE_ENV_ID as ENV_ID
from forager.registration import register_environments
from forager.runtime.registry import open_runtime  # lives with the runtimes; kept here for old imports

register_environments()

__all__ = ["ENV_ID", "TOOLS", "ActionError", "SWEEnv", "ToolCall", "open_runtime", "parse_action"]
