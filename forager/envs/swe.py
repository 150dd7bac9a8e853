"""SWEEnv: a Gymnasium environment over a repository in a runtime, with shell and edit tools."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from pydantic import ValidationError

from forager.core import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_TURNS,
    ForagerError,
    Task,
    ToolCall,
)
from forager.envs.options import EpisodeOptions
from forager.envs.tools import TOOLS, ActionError, cap_text, execute, parse_action
from forager.rewards import RewardConfig, RewardResult, grade_patch
from forager.rewards.functions import RewardContext, RewardSpec
from forager.rewards.grading import grading_preparation
from forager.runtime.base import Preparation, ShellRuntime, prepared
from forager.runtime.docker import DockerLimits
from forager.runtime.pool import WarmPool, shared_pool
from forager.runtime.registry import RuntimeKind, open_runtime
from forager.tasks.checkout import checkout_preparation
from forager.tasks.store import load_tasks

log = logging.getLogger(__name__)

MAX_TEXT = 1 << 20
OBSERVATION_SLACK = 4096
"""Room beyond `max_output_bytes` for Forager's own notes (exit code, timeouts, the budget line)."""


class UnicodeText(spaces.Text):
    """A Text space over all of Unicode; `sample()` draws from printable ASCII and whitespace."""

    def __init__(self, max_length: int, seed: int | None = None) -> None:
        charset = "".join(chr(c) for c in range(32, 127)) + "\n\t"
        super().__init__(max_length=max_length, min_length=0, charset=charset, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length


class SWEEnv(gym.Env[str, str]):
    """Fix a repository with shell and edit tools; the reward comes from the task's tests on submit.

    The action is the model's text holding one tool call (or a ToolCall); the observation is the
    tool's output followed by the remaining budget. The reward is 0 until `submit` or the last turn,
    then the test-pass reward of the diff against the starting commit, graded in a fresh runtime.

    `reset` returns the task prompt as the observation and the system prompt (tools and call format)
    as `info["system_prompt"]`. Its `options` (each for that episode only; an unknown key is an error):
    `task` (a Task, its dict, or an instance_id; else one drawn at random), `max_turns`,
    `command_timeout`, `max_output_bytes`, `max_context_tokens` (stated in the prompts),
    `context_tokens_left` (a callable asked after every step; the budget line then shows tokens too),
    `show_budget`, and `prompts` (PromptTemplates or a mapping of `system_prompt`, `task_prompt`,
    `tool_help`). The step that grades carries `info["reward_result"]` (a RewardResult), its dict
    `info["reward_details"]` and `info["resolved"]`.
    """

    metadata = {"render_modes": ["ansi"]}
    grading_runtimes = 1
    """Fresh runtimes one grading takes (a warm pool prepares as many for each episode)."""

    def __init__(
        self,
        task: Task | dict[str, Any] | None = None,
        tasks: list[Task | dict[str, Any]] | None = None,
        tasks_path: str | None = None,
        runtime: RuntimeKind = "auto",
        max_turns: int = DEFAULT_MAX_TURNS,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        docker_limits: dict[str, Any] | None = None,
        reward: dict[str, Any] | None = None,
        render_mode: str | None = None,
        warm_pool: int | WarmPool = 0,
    ) -> None:
        self.tasks = _collect_tasks(task, tasks, tasks_path)
        self.runtime_kind: RuntimeKind = runtime
        self.defaults = EpisodeOptions(max_turns=max_turns, command_timeout=command_timeout,
                                       max_output_bytes=max_output_bytes)
        """The settings of an episode whose reset options leave them out."""
        self.options = self.defaults
        """The current episode's settings."""
        self.limits = DockerLimits(**(docker_limits or {}))
        self.reward_spec, fields = RewardSpec.split(reward)
        """The reward function and the shaping stacked on the grader's verdict (`forager.rewards.functions`)."""
        self.reward_config = RewardConfig(**fields)
        self.action_errors = 0
        self.render_mode = render_mode
        self.pool: WarmPool | None = None
        """Containers started ahead for resets and grading (Docker only): the given pool, or for a
        size, the process's shared pool."""
        if isinstance(warm_pool, WarmPool):
            self.pool = warm_pool
        elif warm_pool > 0 and runtime != "local":
            self.pool = shared_pool(warm_pool)
        self.observation_space = UnicodeText(MAX_TEXT)
        self.action_space = UnicodeText(MAX_TEXT)
        self.runtime: ShellRuntime | None = None
        self.task: Task | None = None
        self.start_commit = ""
        self.turn = 0
        self.done = True
        self.last_result: RewardResult | None = None
        self._last_obs = ""
        self._next_draw: Task | None = None  # the next random task, drawn early so the pool can prepare it
        self._announced: dict[str, tuple[str, Preparation, int, dict[str, Any]]] = {}
        """What this env told the pool to prepare and has not taken yet: "grading" and "next" reset."""

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._withdraw("grading")  # the last episode ended without grading
        if seed is not None:
            self._next_draw = None  # drawn from the generator the seed replaced
            self._withdraw("next")
        self.options = self.defaults.updated(options)
        self.task = self._pick_task(self.options.task)
        started = time.monotonic()
        self._close_runtime()
        checkout = checkout_preparation(self.task)
        self.runtime = self._open_runtime(self.task, checkout)
        try:
            self.start_commit = prepared(self.runtime, checkout)
        except Exception:
            self._close_runtime()
            raise
        self._announce_next()
        self.turn, self.done, self.last_result, self.action_errors = 0, False, None, 0
        settings = self.options
        system, obs = settings.prompts.render(
            self.task, self.runtime.workdir, max_turns=settings.max_turns,
            max_context_tokens=settings.max_context_tokens, command_timeout=settings.command_timeout)
        self._last_obs = obs
        info = {"task_id": self.task.instance_id, "runtime": type(self.runtime).__name__, "system_prompt": system,
                "turns_left": settings.max_turns, "reset_s": time.monotonic() - started}
        return obs, info

    def step(self, action: str | ToolCall | dict[str, Any]) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.done or self.runtime is None or self.task is None:
            raise RuntimeError("the episode is over (or never began): call reset() first")
        self.turn += 1
        info: dict[str, Any] = {"turn": self.turn, "task_id": self.task.instance_id}
        started = time.monotonic()
        submitted = False
        try:
            call = _to_call(action)
            info["tool"] = call.name
            result = execute(self.runtime, call)
            output, submitted = result.output, result.submitted
            info["exit_code"] = result.exit_code
            info["command_s"] = result.command_s
        except ActionError as err:
            output = f"Error: {err}"
            self.action_errors += 1
            info["action_error"] = cap_text(str(err), OBSERVATION_SLACK)  # it may echo a megabyte of the action
        except ForagerError as err:  # the environment itself failed (say, its container was removed)
            output = f"Environment error: {err}"
            info["env_error"] = str(err)
            self.done = True
            self._last_obs = output
            return output, 0.0, False, True, info
        info["step_s"] = time.monotonic() - started

        turns_left = self.options.max_turns - self.turn
        truncated = not submitted and turns_left <= 0
        reward = 0.0
        if submitted or truncated:
            graded = self.grade()
            reward = graded.reward
            info.update(reward_result=graded, reward_details=graded.to_dict(), resolved=graded.resolved)
            output += f"\n[graded: {graded.resolution}, reward {reward:g}]"
            self.done = True
        if not self.done and self.options.show_budget:
            output += f"\n[{self._budget(turns_left)} left]"
        info["turns_left"] = turns_left
        output = self._fit_observation(output)
        self._last_obs = output
        return output, reward, submitted, truncated, info

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None

    def close(self) -> None:
        self._withdraw("grading")
        self._withdraw("next")
        self._close_runtime()
        super().close()

    @classmethod
    def prepare_tasks(cls, tasks: list[Task], runtime: str = "auto") -> list[Task]:
        """`tasks` as this env runs them (as they are here; a subclass may make them its own, as the
        test-generation env does), so that whoever runs episodes passes the policy the same Task."""
        return tasks

    # -- the rest --------------------------------------------------------------------------------
    def diff(self) -> str:
        """The agent's changes so far, against the commit the episode started from."""
        if self.runtime is None:
            raise RuntimeError("no episode: call reset() first")
        return self.runtime.diff(self.start_commit)

    def grade(self) -> RewardResult:
        assert self.task is not None
        try:
            patch = self.diff()
        except RuntimeError as err:
            self.last_result = RewardResult(self.reward_config.unresolved, resolved=False, resolution="NO",
                                            error=f"no diff: {err}")
            return self.last_result
        self._announced.pop("grading", None)  # taken now
        open_graded = functools.partial(self._open_runtime, preparation=grading_preparation(self.task))
        result = self.grade_diff(self.task, patch, open_graded)
        context = RewardContext(self.task, patch, result, self.reward_config, turns=self.turn,
                                action_errors=self.action_errors)
        result.reward, result.reward_parts = self.reward_spec(context)
        self.last_result = result
        return result

    def grade_diff(self, task: Task, patch: str, open_graded: Callable[[Task], ShellRuntime]) -> RewardResult:
        """The grader's verdict on `patch` for `task`, in runtimes `open_graded` gives (fresh, from the task's
        image; prepared already when a warm pool could): `grade_patch` here, another grader in a subclass."""
        return grade_patch(task, patch, open_graded, self.reward_config)

    def grade_task(self, task: Task, patch: str) -> RewardResult:
        """`patch` graded for `task` outside an episode (say, a candidate in test-time scaling), in fresh runtimes."""
        task = self.prepare_tasks([task], self.runtime_kind)[0]
        return self.grade_diff(task, patch, functools.partial(self._open_runtime, preparation=grading_preparation(task)))

    def expect(self, task: Task | dict[str, Any] | str, count: int = 1) -> None:
        """Announce `count` episodes of `task` to come (say, a GRPO group): with a warm pool, containers
        are checked out for them in the background (each episode's reset then announces its grading).
        Without a pool nothing happens."""
        if self.pool is None or count <= 0:
            return
        task = self._pick_task(task)
        if task.image:
            self.pool.expect(task.image, checkout_preparation(task), count, **self._pool_key(task, self.options))

    def _announce_next(self) -> None:
        """With a pool: this episode's grading, and the next reset's task when the env draws it itself."""
        if self.pool is None or self.task is None or not self.task.image:
            return
        self._announce("grading", self.task, grading_preparation(self.task), self.options, self.grading_runtimes)
        if self.options.task is not None:
            return  # the caller chooses the tasks, and announces them if it knows them (`expect`)
        if len(self.tasks) > 1 and self._next_draw is None:
            self._next_draw = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        upcoming = self._next_draw or self.tasks[0]
        if upcoming.image and "next" not in self._announced:
            self._announce("next", upcoming, checkout_preparation(upcoming), self.defaults)

    def _announce(self, what: str, task: Task, preparation: Preparation, options: EpisodeOptions, count: int = 1) -> None:
        assert self.pool is not None and task.image
        where = self._pool_key(task, options)
        self.pool.expect(task.image, preparation, count, **where)
        self._announced[what] = (task.image, preparation, count, where)

    def _pool_key(self, task: Task, options: EpisodeOptions) -> dict[str, Any]:
        """What besides the image and preparation tells the pool's runtimes apart (as `_open_runtime` takes them)."""
        return {"workdir": task.workdir, "limits": self.limits, "command_timeout": options.command_timeout,
                "max_output_bytes": options.max_output_bytes}

    def _withdraw(self, what: str) -> None:
        announced = self._announced.pop(what, None)
        if announced is not None and self.pool is not None:
            image, preparation, count, where = announced
            self.pool.cancel(image, preparation, count, **where)

    def _fit_observation(self, output: str) -> str:
        """The observation within the observation space and the output budget, and encodable as UTF-8.

        Tool outputs are bounded already; this also bounds what echoes the action (an error naming a
        megabyte-long path) and a `max_output_bytes` set above the space's size.
        """
        limit = min(MAX_TEXT, self.options.max_output_bytes + OBSERVATION_SLACK)
        output = cap_text(output, limit)
        if not output.isascii():  # a lone surrogate cannot be encoded (nor tokenized): replace it
            output = output.encode("utf-8", errors="replace").decode("utf-8")
        return output

    def _budget(self, turns_left: int) -> str:
        budget = f"{turns_left} turn{'s' if turns_left != 1 else ''}"
        if self.options.context_tokens_left is not None:
            budget += f" and about {max(self.options.context_tokens_left(), 0)} tokens of context"
        return budget

    def _open_runtime(self, task: Task, preparation: Preparation | None = None) -> ShellRuntime:
        return open_runtime(task, self.runtime_kind, limits=self.limits, command_timeout=self.options.command_timeout,
                            max_output_bytes=self.options.max_output_bytes, pool=self.pool, preparation=preparation)

    def _pick_task(self, choice: Task | dict[str, Any] | str | None) -> Task:
        if isinstance(choice, Task):
            return choice
        if isinstance(choice, dict):
            return Task.model_validate(choice)
        if isinstance(choice, str):
            for task in self.tasks:
                if task.instance_id == choice:
                    return task
            raise KeyError(f"no task {choice!r}; known: {', '.join(t.instance_id for t in self.tasks[:10])}")
        if not self.tasks:
            raise ValueError("no tasks: pass task=, tasks= or tasks_path=, or options={'task': ...} to reset()")
        if self._next_draw is not None:
            drawn, self._next_draw = self._next_draw, None
            self._announced.pop("next", None)  # taken by this reset
            return drawn
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _close_runtime(self) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.close()


def _to_call(action: Any) -> ToolCall:
    """The action as one ToolCall; anything malformed is an ActionError (the agent's, not the env's)."""
    if isinstance(action, ToolCall):
        return action
    if isinstance(action, dict):
        try:
            return ToolCall.model_validate(action)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p)[:40] for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5])
            raise ActionError(f'a tool call is {{"name": ..., "arguments": {{...}}}} ({problems})') from err
    return parse_action(action)


def _collect_tasks(task: Any, tasks: list[Any] | None, tasks_path: str | None) -> list[Task]:
    collected = [t if isinstance(t, Task) else Task.model_validate(t) for t in ([task] if task else []) + (tasks or [])]
    if tasks_path:
        collected += load_tasks(Path(tasks_path))
    if not collected and task is None and tasks is None and tasks_path is None:
        from forager.images.sample import sample_tasks  # the embedded default: the sample repository

        collected = sample_tasks()
    return collected


__all__ = ["SWEEnv", "TOOLS", "UnicodeText"]
