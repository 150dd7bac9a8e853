"""Shaping terms: adjustments stacked on a reward function's number, in the order a config lists them.

A shaping term takes `(context, reward, **options)`, the reward so far second, and returns the new
reward (`forager.rewards.functions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forager.rewards.functions import RewardContext


def format_penalty(context: RewardContext, reward: float, per_error: float = 0.1, most: float = 0.5) -> float:
    """Less `per_error` for each malformed action, at most `most` in all."""
    return reward - min(most, per_error * context.action_errors)


def length_penalty(context: RewardContext, reward: float, per_turn: float = 0.01, free_turns: int = 16,
                   most: float = 0.5) -> float:
    """Less `per_turn` for each turn beyond `free_turns`, at most `most` in all."""
    return reward - min(most, per_turn * max(0, context.turns - free_turns))


__all__ = ["format_penalty", "length_penalty"]
