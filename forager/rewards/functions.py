"""Reward functions and shaping: what an episode's grading is worth, chosen by name and stacked by config.

The grader (`grade_patch`) decides what the tests say; a reward function turns that verdict, the
patch and the episode into the number the trainer sees. `test-pass` (the default) is the grader's
own reward; `patch-similarity` is CWM's fallback for tasks whose tests cannot decide. Shaping terms
(`format-penalty`, `length-penalty`) then adjust it, in the order a config lists them:

    reward: {unresolved: -1.0, function: test-pass, shaping: [{name: format-penalty, per_error: 0.1}]}

A plug-in reward is a `forager.rewards` entry point (`forager.plugins`) naming a callable: a reward
function takes `(context, **options)` and returns a number; a shaping term takes `(context, reward,
**options)` and returns the new reward. A result that is not a finite number is an error naming it.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from forager.core import ForagerError, Task
from forager.loading import load_named
from forager.rewards.grading import RewardConfig, RewardResult


@dataclass(frozen=True)
class RewardContext:
    """What a reward function may read: the task, the agent's patch, the grader's verdict, the episode."""

    task: Task
    diff: str
    result: RewardResult
    config: RewardConfig
    turns: int = 0
    action_errors: int = 0
    """Turns whose action could not be parsed or run (a malformed tool call)."""


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
    reference = _changed_lines(context.task.patch or "")
    ratio = difflib.SequenceMatcher(None, _changed_lines(context.diff), reference).ratio()
    return config.resolved if context.task.patch and ratio >= threshold else config.unresolved


def format_penalty(context: RewardContext, reward: float, per_error: float = 0.1, most: float = 0.5) -> float:
    """Less `per_error` for each malformed action, at most `most` in all."""
    return reward - min(most, per_error * context.action_errors)


def length_penalty(context: RewardContext, reward: float, per_turn: float = 0.01, free_turns: int = 16,
                   most: float = 0.5) -> float:
    """Less `per_turn` for each turn beyond `free_turns`, at most `most` in all."""
    return reward - min(most, per_turn * max(0, context.turns - free_turns))


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


REWARDS = {
    "test-pass": "forager.rewards.functions:tests_passed",
    "patch-similarity": "forager.rewards.functions:patch_similarity",
}
SHAPING = {
    "format-penalty": "forager.rewards.functions:format_penalty",
    "length-penalty": "forager.rewards.functions:length_penalty",
}


@dataclass(frozen=True)
class RewardSpec:
    """A reward function and the shaping stacked on it, from an env's `reward` settings."""

    function: str = "test-pass"
    options: Mapping[str, Any] | None = None
    shaping: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def split(cls, settings: Mapping[str, Any] | None) -> tuple[RewardSpec, dict[str, Any]]:
        """(the spec, the RewardConfig fields) of an env's `reward` settings."""
        rest = dict(settings or {})
        shaping = rest.pop("shaping", None) or []
        if not isinstance(shaping, list) or not all(isinstance(s, Mapping) and "name" in s for s in shaping):
            raise ForagerError("reward.shaping: a list of {name: ..., options...} mappings")
        spec = cls(str(rest.pop("function", "test-pass")), dict(rest.pop("options", None) or {}), tuple(shaping))
        spec.loaded  # noqa: B018 - a typo is an error now, not after the first episode
        return spec, rest

    @functools.cached_property
    def loaded(self) -> tuple[Callable[..., Any], list[tuple[str, Callable[..., Any], dict[str, Any]]]]:
        """The reward function and the shaping terms with their options, imported once."""
        function = load_named(self.function, REWARDS, "reward", plugins="rewards")
        terms = [(str(term["name"]), load_named(str(term["name"]), SHAPING, "reward shaping", plugins="rewards"),
                  {k: v for k, v in term.items() if k != "name"}) for term in self.shaping]
        return function, terms

    def __call__(self, context: RewardContext) -> tuple[float, dict[str, float]]:
        """The final reward, and each stage's value (`function`, then each shaping term by name)."""
        function, terms = self.loaded
        reward = _call(self.function, function, context, **(self.options or {}))
        parts = {self.function: reward}
        for name, term, options in terms:
            reward = _call(name, term, context, reward, **options)
            parts[name] = reward
        return reward, parts


def _call(name: str, function: Callable[..., Any], *args: Any, **options: Any) -> float:
    """`function(*args, **options)` as a finite float, or a ForagerError naming the reward."""
    try:
        value = function(*args, **options)
    except ForagerError:
        raise
    except Exception as err:  # noqa: BLE001 - a plug-in's bug, reported as its own
        raise ForagerError(f"reward {name!r} failed: {type(err).__name__}: {err}") from err
    return _number(name, value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ForagerError(f"reward {name!r} returned {value!r} ({type(value).__name__}), not a finite number")
    return float(value)


__all__ = ["REWARDS", "SHAPING", "RewardContext", "RewardSpec", "format_penalty", "length_penalty", "patch_similarity",
           "tests_passed"]
