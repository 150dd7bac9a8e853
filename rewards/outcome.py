"""Reward functions: what a graded episode is worth, from the grader's verdict and the agent's patch.

A reward function takes `(context, **options)` and returns a number (`forager.rewards.functions`).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forager.rewards.functions import RewardContext


def tests_passed(context: RewardContext) -> float:
    """The grader's reward: `resolved` when every FAIL_TO_PASS and PASS_TO_PASS test passes, else `unresolved`."""
    return context.result.reward


def patch_similarity(context: RewardContext, threshold: float = 0.5) -> float:
    """CWM's fallback for tasks whose tests cannot decide (they name none): `resolved` when the patch's
    changed lines match the reference fix's at least `threshold` (difflib's ratio), else `unresolved`.

    A task with tests is graded by them alone, even when the run failed: a policy can make a run fail
    (a screened patch, a crash, tampering), and must not trade that for a likeness score."""
    config = context.config
    if context.task.tests:
        return context.result.reward
    reference = changed_lines(context.task.patch or "")
    ratio = difflib.SequenceMatcher(None, changed_lines(context.diff), reference).ratio()
    return config.resolved if context.task.patch and ratio >= threshold else config.unresolved


def changed_lines(diff: str) -> list[str]:
    """The added and removed lines of a unified diff, without its `---`/`+++` file headers."""
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


__all__ = ["changed_lines", "patch_similarity", "tests_passed"]
