"""Policies: given the conversation so far, the next assistant message."""

from forager.policies.reference import ReferencePolicy, reference_actions

__all__ = ["ReferencePolicy", "reference_actions"]
