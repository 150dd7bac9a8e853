"""PolicySpec: a policy described by name and options, and how command-line flags choose one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from forager.core import ForagerError, Policy

REFERENCE_FALLBACK = ("no model configured (--base-url/--model or FORAGER_BASE_URL): using the reference "
                      "policy, which replays each task's known fix through the tools")


class PolicySpec(BaseModel):
    """A policy by name and options: what workers (threads or Ray actors) build their policy from."""

    model_config = ConfigDict(extra="forbid")
    name: str = "reference"
    options: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> Policy:
        """The policy itself (imported here, not at the top: `forager.policies` imports this module)."""
        from forager.policies import make_policy

        return make_policy(self.name, **self.options)

    def public(self) -> dict[str, Any]:
        """The spec without secrets (API keys), for the run file."""
        return {"name": self.name, "options": {k: ("***" if "key" in k.lower() else v)
                                               for k, v in self.options.items()}}


def parse_policy_options(items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings as a dict; a value that parses as JSON is taken as JSON, else as text."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ForagerError(f"--policy-option takes KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def policy_spec_from_flags(
    policy: str | None = None, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
    temperature: float | None = None, replay: Path | None = None, options: Iterable[str] = (),
    *, log: Callable[[str], None] | None = None,
) -> PolicySpec:
    """Which policy to run: as asked, or an OpenAI-compatible server when one is configured, else the reference.

    The server flags given (model, base_url, api_key, temperature) go to `openai` and to any other policy
    but `hf`, `replay` and `reference`: a serving recipe (`forager policies show NAME`) takes OpenAIPolicy's
    options, and a plug-in that takes none says so. `log` hears when no policy was asked for and none is
    configured, so the reference policy runs.
    """
    configured = base_url or os.environ.get("FORAGER_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    if policy is None:
        policy = "replay" if replay else ("openai" if configured or model else "reference")
        if policy == "reference" and log is not None:
            log(REFERENCE_FALLBACK)
    values = parse_policy_options(options)
    if policy not in ("hf", "replay", "reference"):  # openai, a plug-in (a serving recipe) or module:Class
        values.update({k: v for k, v in {"model": model, "base_url": base_url, "api_key": api_key,
                                          "temperature": temperature}.items() if v is not None})
    elif policy == "hf":
        if model is None and "model" not in values:
            raise ForagerError("the hf policy needs --model (a local path or a hub name)")
        values.update({k: v for k, v in {"model": model, "temperature": temperature}.items() if v is not None})
    elif policy == "replay":
        if replay is None and "trajectories" not in values:
            raise ForagerError("the replay policy needs --replay FILE_OR_DIR (recorded trajectories)")
        if replay is not None:
            values["trajectories"] = str(replay)
    return PolicySpec(name=policy, options=values)


__all__ = ["PolicySpec", "parse_policy_options", "policy_spec_from_flags"]
