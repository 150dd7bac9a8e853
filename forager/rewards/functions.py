"""Reward functions and shaping: what an episode's grading is worth, chosen by name and stacked by config.

The grader (`grade_patch`) decides what the tests say; a reward function turns that verdict, the
patch and the episode into the number the trainer sees, and shaping terms then adjust it, in the
order a config lists them:

    reward: {unresolved: -1.0, function: test-pass, shaping: [{name: format-penalty, per_error: 0.1}]}

Every reward is a plug-in, a `forager.rewards` entry point (`forager.plugins`) naming a callable:
Forager's own (`test-pass`, the default; `patch-similarity`; the shaping terms `format-penalty` and
`length-penalty`) live in the top-level `rewards/` folder, installed as `forager_rewards`, declared in
Forager's pyproject.toml as any package declares its own. A reward function takes `(context,
**options)` and returns a number; a shaping term takes `(context, reward, **options)` and returns the
new reward: `reward_role` tells them apart by that second positional parameter. A result that is not
a finite number is an error naming it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from forager.core import ForagerError, Task
from forager.loading import load_named
from forager.rewards.grading import RewardConfig, RewardResult

DEFAULT_REWARD = "test-pass"
"""The reward function of an env whose `reward` settings name none: the grader's own verdict."""
Role = Literal["reward", "shaping", ""]


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


def reward_role(function: Callable[..., Any]) -> Role:
    """`reward` for a reward function (one required positional parameter: the context), `shaping` for a
    shaping term (two: the context and the reward so far), "" when its signature does not tell."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a C function)
        return ""
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return ""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is p.empty]
    return "reward" if len(required) == 1 else "shaping" if len(required) == 2 else ""


def load_reward(name: str, role: Literal["reward", "shaping"]) -> Callable[..., Any]:
    """The reward plug-in `name` (or a `module:function` path), checked to play `role`; a ForagerError
    with the close names when there is none, and with what to write instead when it plays the other role."""
    what = "reward" if role == "reward" else "reward shaping"
    try:
        function = load_named(name, {}, what, plugins="rewards")
    except ForagerError as err:
        from forager.plugins import discover

        if ":" in name or discover().of("rewards"):
            raise
        raise ForagerError(f"{err}; Forager's own rewards are the package forager_rewards (the rewards/ folder): "
                           "reinstall Forager (`pip install -e .` in a checkout)") from err
    found = reward_role(function)
    if found == "shaping" and role == "reward":
        raise ForagerError(f"reward {name!r} is a shaping term (it takes the context and the reward so far): "
                           "list it under reward.shaping, and name a reward function in reward.function")
    if found == "reward" and role == "shaping":
        raise ForagerError(f"reward {name!r} is a reward function (it takes the context alone): name it in "
                           "reward.function, not under reward.shaping")
    return function


@dataclass(frozen=True)
class RewardSpec:
    """A reward function and the shaping stacked on it, from an env's `reward` settings."""

    function: str = DEFAULT_REWARD
    options: Mapping[str, Any] | None = None
    shaping: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def split(cls, settings: Mapping[str, Any] | None) -> tuple[RewardSpec, dict[str, Any]]:
        """(the spec, the RewardConfig fields) of an env's `reward` settings."""
        rest = dict(settings or {})
        shaping = rest.pop("shaping", None) or []
        if not isinstance(shaping, list) or not all(isinstance(s, Mapping) and "name" in s for s in shaping):
            raise ForagerError("reward.shaping: a list of {name: ..., options...} mappings")
        spec = cls(str(rest.pop("function", DEFAULT_REWARD)), dict(rest.pop("options", None) or {}), tuple(shaping))
        spec.loaded  # noqa: B018 - a typo is an error now, not after the first episode
        return spec, rest

    @functools.cached_property
    def loaded(self) -> tuple[Callable[..., Any], list[tuple[str, Callable[..., Any], dict[str, Any]]]]:
        """The reward function and the shaping terms with their options, imported once."""
        function = load_reward(self.function, "reward")
        terms = [(str(term["name"]), load_reward(str(term["name"]), "shaping"),
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


__all__ = ["DEFAULT_REWARD", "RewardContext", "RewardSpec", "load_reward", "reward_role"]
