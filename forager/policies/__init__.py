"""Policies: given the conversation so far, the next assistant message with its tokens.

`make_policy(name, **options)` builds one by short name; backends are imported only when used, so
the reference policy needs neither an HTTP client nor torch.
"""

from __future__ import annotations

from typing import Any

from forager.core import ForagerError, Policy
from forager.loading import load_named
from forager.policies.reference import ReferencePolicy, reference_actions
from forager.policies.spec import PolicySpec, policy_spec_from_flags

POLICIES = {
    "reference": "forager.policies.reference:ReferencePolicy",
    "replay": "forager.policies.replay:ReplayPolicy",
    "openai": "forager.policies.openai:OpenAIPolicy",
    "hf": "forager.policies.hf:HFPolicy",
}


def make_policy(name: str, **options: Any) -> Policy:
    """A policy by short name (`reference`, `replay`, `openai`, `hf`), plug-in name or `module:Class` path."""
    hint = " (install the `train` extra: pip install 'forager[train]')" if name == "hf" else ""
    cls = load_named(name, POLICIES, "policy", install_hint=hint, plugins="policies")
    try:
        return cls(**options)
    except TypeError as err:
        raise ForagerError(f"policy {name!r} does not take these options: {err}") from err


__all__ = ["POLICIES", "PolicySpec", "ReferencePolicy", "make_policy", "policy_spec_from_flags", "reference_actions"]
