"""SWEEnv: a Gymnasium environment over a repository in a runtime, with shell and edit tools."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
from gymnasium import spaces

from forager.core import ForagerError, RuntimeUnavailable, Task, ToolCall
from forager.envs.tools import TAG_FORMAT_HELP, TOOLS, ActionError, execute, parse_action
from forager.rewards import RewardConfig, RewardResult, grade_patch
from forager.runtime.base import ShellRuntime
from forager.runtime.docker import DockerLimits, DockerRuntime, docker_client
from forager.runtime.local import LocalRuntime
from forager.runtime.pool import WarmPool, shared_pool
from forager.tasks.checkout import checkout_task
from forager.tasks.store import load_tasks

log = logging.getLogger(__name__)

RuntimeKind = Literal["auto", "docker", "local"]
MAX_TEXT = 1 << 20


class UnicodeText(spaces.Text):
    """A Text space over all of Unicode; `sample()` draws from printable ASCII and whitespace."""

    def __init__(self, max_length: int, seed: int | None = None) -> None:
        charset = "".join(chr(c) for c in range(32, 127)) + "\n\t"
        super().__init__(max_length=max_length, min_length=0, charset=charset, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length


def open_runtime(
    task: Task, kind: RuntimeKind = "auto", *, limits: DockerLimits | None = None,
    command_timeout: float = 120.0, max_output_bytes: int = 20_000, pool: WarmPool | None = None,
) -> ShellRuntime:
    """A runtime for `task`: Docker when asked, or when `auto` and an engine with the task's image answers.

    With a warm `pool`, a Docker runtime is taken from it (ready at once when one is warm).
    """
    client = None
    if kind == "auto":
        client = _client_with_image(task.image) if task.image else None
        kind = "docker" if client is not None else "local"
        if kind == "local" and not task.local_repo:
            raise RuntimeUnavailable(
                f"task {task.instance_id}: no Docker engine with image {task.image!r} answers and it has no "
                "local_repo. Start Docker and build or pull the image (`forager images sample` for the sample)."
            )
    if kind == "docker":
        if not task.image:
            raise RuntimeUnavailable(f"task {task.instance_id} has no image for the Docker runtime")
        if pool is not None:
            if client is not None:
                client.close()
            return pool.take(task.image, task.workdir, limits=limits, command_timeout=command_timeout,
                             max_output_bytes=max_output_bytes)
        return DockerRuntime(task.image, task.workdir, limits=limits, command_timeout=command_timeout,
                             max_output_bytes=max_output_bytes, client=client)
    if not task.local_repo:
        raise RuntimeUnavailable(f"task {task.instance_id} has no local_repo for the local runtime")
    return LocalRuntime(task.local_repo, command_timeout=command_timeout, max_output_bytes=max_output_bytes)


def _client_with_image(image: str):
    """A Docker client (reused by the runtime: one connection and ping per reset) if `image` is there."""
    try:
        client = docker_client()
    except RuntimeUnavailable:
        return None
    try:
        client.images.get(image)
        return client
    except Exception:  # noqa: BLE001 - missing image or engine trouble: both mean "not here"
        client.close()
        return None


class SWEEnv(gym.Env[str, str]):
    """Fix a repository with shell and edit tools; the reward comes from the task's tests on submit.

    The action is the model's text holding one tool call (or a ToolCall); the observation is the
    tool's output followed by the remaining budget. The reward is 0 until `submit` or the last turn,
    then the test-pass reward of the diff against the starting commit, graded in a fresh runtime.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        task: Task | dict[str, Any] | None = None,
        tasks: list[Task | dict[str, Any]] | None = None,
        tasks_path: str | None = None,
        runtime: RuntimeKind = "auto",
        max_turns: int = 64,
        command_timeout: float = 120.0,
        max_output_bytes: int = 20_000,
        docker_limits: dict[str, Any] | None = None,
        reward: dict[str, Any] | None = None,
        render_mode: str | None = None,
        warm_pool: int | WarmPool = 0,
    ) -> None:
        self.tasks = _collect_tasks(task, tasks, tasks_path)
        self.runtime_kind: RuntimeKind = runtime
        self.max_turns = max_turns
        self.command_timeout = command_timeout
        self.max_output_bytes = max_output_bytes
        self.limits = DockerLimits(**(docker_limits or {}))
        self.reward_config = RewardConfig(**(reward or {}))
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
        self.context_tokens_left: int | None = None
        """Set by an agent that tracks the context: the budget line of observations then shows it too."""
        self.show_budget = True
        """End every observation with the budget left (turns, and tokens when known)."""
        self._last_obs = ""

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self.task = self._pick_task((options or {}).get("task"))
        started = time.monotonic()
        self._close_runtime()
        self.runtime = self._open_runtime(self.task)
        try:
            self.start_commit = checkout_task(self.runtime, self.task)
        except Exception:
            self._close_runtime()
            raise
        self.turn, self.done, self.last_result = 0, False, None
        obs = self._task_prompt(self.task)
        self._last_obs = obs
        info = {"task_id": self.task.instance_id, "runtime": type(self.runtime).__name__,
                "turns_left": self.max_turns, "reset_s": time.monotonic() - started}
        return obs, info

    def step(self, action: str | ToolCall | dict[str, Any]) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.done or self.runtime is None or self.task is None:
            raise RuntimeError("the episode is over (or never began): call reset() first")
        self.turn += 1
        info: dict[str, Any] = {"turn": self.turn, "task_id": self.task.instance_id}
        started = time.monotonic()
        submitted = False
        try:
            call = action if isinstance(action, ToolCall) else (
                ToolCall.model_validate(action) if isinstance(action, dict) else parse_action(action))
            info["tool"] = call.name
            result = execute(self.runtime, call)
            output, submitted = result.output, result.submitted
            info["exit_code"] = result.exit_code
            info["command_s"] = result.command_s
        except ActionError as err:
            output = f"Error: {err}"
            info["action_error"] = str(err)
        except ForagerError as err:  # the environment itself failed (say, its container was removed)
            output = f"Environment error: {err}"
            info["env_error"] = str(err)
            self.done = True
            self._last_obs = output
            return output, 0.0, False, True, info
        info["step_s"] = time.monotonic() - started

        turns_left = self.max_turns - self.turn
        truncated = not submitted and turns_left <= 0
        reward = 0.0
        if submitted or truncated:
            result_ = self.grade()
            reward = result_.reward
            info["reward_details"] = result_.to_dict()
            info["resolved"] = result_.resolved
            output += f"\n[graded: {result_.report}, reward {reward:g}]"
            self.done = True
        if not self.done and self.show_budget:
            budget = f"{turns_left} turn{'s' if turns_left != 1 else ''}"
            if self.context_tokens_left is not None:
                budget += f" and about {max(self.context_tokens_left, 0)} tokens of context"
            output += f"\n[{budget} left]"
        info["turns_left"] = turns_left
        self._last_obs = output
        return output, reward, submitted, truncated, info

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None

    def close(self) -> None:
        self._close_runtime()
        super().close()

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
            self.last_result = RewardResult(self.reward_config.unresolved, False, "NO", error=f"no diff: {err}")
            return self.last_result
        self.last_result = grade_patch(self.task, patch, self._open_runtime, self.reward_config)
        return self.last_result

    def _open_runtime(self, task: Task) -> ShellRuntime:
        return open_runtime(task, self.runtime_kind, limits=self.limits, command_timeout=self.command_timeout,
                            max_output_bytes=self.max_output_bytes, pool=self.pool)

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
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _task_prompt(self, task: Task) -> str:
        return (
            f"You are working in the repository at {self.runtime.workdir if self.runtime else task.workdir}.\n"
            f"Resolve this issue by editing the source code (not the tests):\n\n{task.problem_statement.strip()}\n\n"
            f"{TAG_FORMAT_HELP}\nWhen you are done, call submit. You have {self.max_turns} turns."
        )

    def _close_runtime(self) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.close()


def _collect_tasks(task: Any, tasks: list[Any] | None, tasks_path: str | None) -> list[Task]:
    collected = [t if isinstance(t, Task) else Task.model_validate(t) for t in ([task] if task else []) + (tasks or [])]
    if tasks_path:
        collected += load_tasks(Path(tasks_path))
    if not collected and task is None and tasks is None and tasks_path is None:
        from forager.images.sample import sample_tasks  # the embedded default: the sample repository

        collected = sample_tasks()
    return collected


__all__ = ["SWEEnv", "TOOLS", "UnicodeText", "open_runtime"]
