"""The ForagerAgent loop: a policy acts in an environment until it submits or a budget runs out.

Every episode ends with a Trajectory and a termination reason, whatever happens: a policy that
errors, an environment that dies, or a bug in Forager itself (`crashed`, with the traceback).
The agent meets the env at the Gymnasium seam: budgets and prompts go in as reset options, the
prompts and the graded RewardResult come back in the observation and `info`; only the diff and an
aborted episode's grading go through `env.unwrapped`, as Gymnasium has no call for them.

Any other environment speaking text (a plug-in: observation text, action text, the reward when the
episode ends) is driven the same way: its task is an id (`reset(options={"task": id})`, or a seed
for an env without task ids: `seed:N`), the policy's whole reply is the action, and `info` may
carry `system_prompt` (after reset) and `resolved` (when it ends; else resolved means reward > 0).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

import gymnasium as gym

from forager.agent.config import AgentConfig, CollectConfig
from forager.agent.text_envs import make_text_env, swe_env_class
from forager.core import (
    ContextLengthExceeded,
    ForagerError,
    Message,
    Policy,
    PolicyError,
    PolicyOutput,
    PolicyUnavailable,
    Task,
    Termination,
    ToolCall,
    Trajectory,
    TrajectoryMessage,
)
from forager.envs.swe import SWEEnv
from forager.envs.tools import TOOLS, ActionError, parse_action
from forager.rewards import RewardResult
from forager.runtime.engine import check_docker_hosts, host_answers
from forager.runtime.pool import WarmPool

log = logging.getLogger(__name__)

LOG_TAIL_CHARS = 4000
"""Characters of the grading log a trajectory keeps (`reward_details["log_tail"]`)."""
MIN_ROOM_TOKENS = 16
"""Fewer tokens of context left than this cannot hold a useful reply: the episode ends there."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_env(config: AgentConfig, runtime: str = "auto", reward: dict[str, Any] | None = None,
             docker_limits: dict[str, Any] | None = None, warm_pool: int | WarmPool = 0,
             env_class: type[SWEEnv] = SWEEnv) -> SWEEnv:
    """A task-less SWEEnv (or `env_class`, a subclass) with the agent's budgets; `run_episode` resets it onto each task."""
    return env_class(tasks=[], runtime=runtime, max_turns=config.max_turns, command_timeout=config.command_timeout,
                  max_output_bytes=config.max_output_bytes, reward=reward, docker_limits=docker_limits,
                  warm_pool=warm_pool)


def make_pool(config: CollectConfig) -> WarmPool | None:
    """The warm pool the workers share, or None (none asked for, or the local runtime, which starts nothing).

    Room for two prepared containers per worker (its next episode's checkout and its grading), and a
    warming thread per four workers (at least 2, at most 8): `docker run` is the engine's work, not ours.
    With `docker_hosts`, every host must answer first (RuntimeUnavailable names those that do not), and
    there is always a pool: the first host's, whose `for_host` gives each worker its own engine's (with
    `warm_pool` 0 they start nothing ahead, they only put the containers on their engine).
    """
    if config.text_env or (not config.docker_hosts and (config.runtime == "local" or not config.warm_pool)):
        return None
    check_docker_hosts(config.docker_hosts)
    prepared_limit = max(8, 2 * config.workers + config.warm_pool) if config.warm_pool else 0
    return WarmPool(config.warm_pool, threads=min(8, max(2, config.workers // 4)), prepared_limit=prepared_limit,
                    docker_host=config.docker_host(0))


_worker_numbers = itertools.count()
"""Numbers for workers made without one (the trainer's episode slots), so they take the hosts in turn."""


def make_worker_env(agent: AgentConfig, config: CollectConfig, pool: WarmPool | None, worker: int | None = None) -> Any:
    """Worker number `worker`'s env: the collection's runtime, reward and limits, its containers from `pool`
    when there is one, on the engine `config.docker_host(worker)` (without a number: the next in turn); or
    the plug-in env `config.env_id`, made by Gymnasium."""
    if config.text_env:
        return make_text_env(config.text_env)
    runtime = config.runtime
    if config.docker_hosts:
        host = config.docker_host(next(_worker_numbers) if worker is None else worker)
        # A pool puts every container of the env, its episodes' and its gradings', on the pool's engine.
        pool = pool.for_host(host) if pool is not None else WarmPool(0, prepared_limit=0, docker_host=host)
        runtime = "docker"  # `auto` would look for the image on the default engine
    return make_env(agent, runtime, config.reward or None, config.docker_limits or None, pool or 0,
                    swe_env_class(config.env_id) or SWEEnv)


def host_gone(config: CollectConfig, worker: int) -> bool:
    """Whether worker `worker`'s Docker host stopped answering (said in the log). A collection then gives
    that worker no more episodes, which would all fail at once, and leaves them to the workers of live
    hosts (or to the next run)."""
    host = config.docker_host(worker)
    if host is None or host_answers(host):
        return False
    log.warning("worker %d stops: the Docker engine at %s no longer answers (its last episode is an "
                "infrastructure failure); the other workers take the rest", worker, host)
    return True


def run_episode(
    env: gym.Env[str, str],
    policy: Policy,
    task: Task | str,
    config: AgentConfig | None = None,
    *,
    sample: int = 0,
    on_turn: Callable[[Trajectory], None] | None = None,
) -> Trajectory:
    """One episode of `policy` on `task` in `env` (a SWEEnv, wrapped or not, with a Task; or a text env with a
    task id); never raises for a failed episode."""
    return Episode(env, policy, task, config or AgentConfig(), sample=sample, on_turn=on_turn).run()


def _describe(policy: Policy) -> dict[str, Any]:
    """What produced the actions: the policy's own description, or its name and model."""
    describe = getattr(policy, "describe", None)
    if callable(describe):
        return dict(describe())
    model = getattr(policy, "model", None)
    name = getattr(policy, "name", type(policy).__name__)
    return {"name": name, **({"model": model} if isinstance(model, str) else {})}


class _Done(Exception):
    """Ends the episode: `termination` says why; `error`, if any, is the trajectory's error."""

    def __init__(self, termination: Termination, error: str | None = None, *, infrastructure: bool = False) -> None:
        super().__init__(error or termination)
        self.termination, self.error = termination, error
        self.infrastructure = infrastructure
        """Docker, the engine or the policy's server failed, not the agent: a collection retries it."""


class Episode:
    """One episode: query the policy, execute its action in the env, until `_Done`; then finish."""

    def __init__(self, env: gym.Env[str, str], policy: Policy, task: Task | str, config: AgentConfig, *,
                 sample: int = 0, on_turn: Callable[[Trajectory], None] | None = None) -> None:
        self.env, self.policy, self.config, self.on_turn = env, policy, config, on_turn
        self.task = task if isinstance(task, Task) else None
        self.task_id = task.instance_id if isinstance(task, Task) else str(task)
        self.swe = cast(SWEEnv, env.unwrapped) if isinstance(env.unwrapped, SWEEnv) else None
        """For what Gymnasium has no call for: the diff, and grading an episode that ended without a step."""
        if self.swe is not None and self.task is None:
            raise ForagerError(f"a SWE environment runs Tasks, not the id {self.task_id!r}")
        self.trajectory = Trajectory(
            trajectory_id=f"{self.task_id}#{sample}", task_id=self.task_id, sample=sample,
            repo=self.task.repo if self.task else "", kind=self.task.kind if self.task else _env_id(env),
            started_at=_now(), policy=_describe(policy),
        )
        self.termination: Termination = "crashed"
        self.graded = False
        self.tools = [tool.openai_schema() for tool in TOOLS.values()] if config.tool_format == "openai" else None
        self.timings = {"reset": 0.0, "policy": 0.0, "env": 0.0, "commands": 0.0, "grade": 0.0, "tests": 0.0}
        self.prefix_ids: list[int] | None = []
        """Exact tokens through the last assistant message; None once a turn's tokens are unknown."""
        self.context_tokens = 0
        self.estimated = False
        self.chars_per_token = config.chars_per_token
        """Calibrated on the policy's own token counts as soon as it reports them."""

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> Trajectory:
        """Reset, step until the episode is done, finish; the trajectory is saved in every ending."""
        started = time.monotonic()
        try:
            self.reset()
            while True:
                self.step()
        except _Done as done:
            self.termination = done.termination
            if done.error is not None:
                self.trajectory.error = done.error
            if done.infrastructure:
                self.trajectory.metadata["infrastructure_error"] = True
        except Exception:  # noqa: BLE001 - a bug: the trajectory is still saved, with the traceback
            self.termination, self.trajectory.error = "crashed", traceback.format_exc(limit=8)
            log.exception("episode %s crashed", self.trajectory.trajectory_id)
        finally:
            self.finish(started)
        return self.trajectory

    def reset(self) -> None:
        """Reset the env onto the task with the agent's budgets and prompts; the prompts come back rendered."""
        started = time.monotonic()
        try:
            if self.swe is None:
                observation, info = self._reset_text_env()
            else:
                observation, info = self.env.reset(options=self.reset_options())
        except ForagerError as err:
            raise _Done("env_error", f"reset failed: {err}", infrastructure=True) from err
        except Exception as err:  # Docker API errors and the like: the environment, not the agent
            where = "reset failed" if self.swe is not None else \
                f"reset failed in {_env_id(self.env)}:\n{traceback.format_exc(limit=12)}"  # a plug-in's own bug
            raise _Done("env_error", f"{where}: {type(err).__name__}: {err}", infrastructure=True) from err
        finally:
            self.timings["reset"] = time.monotonic() - started
        system = str(info.get("system_prompt") or "")
        if system:
            self.add("system", system)
        self.add("user", observation)
        self.context_tokens = self.estimate(system + observation)

    def _reset_text_env(self) -> tuple[str, dict[str, Any]]:
        """A plug-in env: onto the task id, or the seed an id `seed:N` stands for; its observation must be text."""
        seed = self.task_id.partition("seed:")[2]
        if self.task_id.startswith("seed:") and seed.isdigit():
            observation, info = self.env.reset(seed=int(seed))
        else:
            observation, info = self.env.reset(options={"task": self.task_id})
        if not isinstance(observation, str):
            raise ForagerError(f"{_env_id(self.env)}: reset() returned a {type(observation).__name__}, not text")
        return observation, dict(info or {})

    def reset_options(self) -> dict[str, Any]:
        """The episode's budgets are the agent's, whatever the env was made with."""
        config = self.config
        return {"task": self.task, "max_turns": config.max_turns, "command_timeout": config.command_timeout,
                "max_output_bytes": config.max_output_bytes, "max_context_tokens": config.max_context_tokens,
                "show_budget": config.budget_in_observation, "context_tokens_left": self.context_tokens_left,
                "prompts": config.prompt_templates()}

    def context_tokens_left(self) -> int:
        return self.config.max_context_tokens - self.context_tokens

    def step(self) -> None:
        """One turn: the policy's message, then its action's observation (a malformed action costs a turn)."""
        out = self.query()
        if self.swe is None:  # a text env reads the whole reply itself
            action, error, env_action = None, None, out.text
        else:
            action, error, env_action = _parse(out, self.config.tool_format)
        self.record_output(out, action, error)
        self.trajectory.num_turns += 1
        if self.context_tokens > self.config.max_context_tokens:  # the estimate was short; stop here
            raise _Done("out_of_context")
        self.execute(out, env_action)

    def query(self) -> PolicyOutput:
        """The policy's next message, with as many tokens as the context has room for."""
        room = self.context_tokens_left()
        if room < MIN_ROOM_TOKENS:
            raise _Done("out_of_context")
        started = time.monotonic()
        try:
            return self.policy.act(self.chat(), task=self.task, prefix_token_ids=self.prefix_ids or None,
                                   max_tokens=min(self.config.max_tokens_per_turn, room), tools=self.tools)
        except ContextLengthExceeded as err:
            raise _Done("out_of_context", str(err)) from err
        except PolicyUnavailable as err:
            raise _Done("policy_error", str(err), infrastructure=True) from err
        except PolicyError as err:
            raise _Done("policy_error", str(err)) from err
        finally:
            self.timings["policy"] += time.monotonic() - started

    def execute(self, out: PolicyOutput, env_action: ToolCall | str) -> None:
        """Step the env with the action, record the observation and any grading, and stop when it ends."""
        started = time.monotonic()
        try:
            observation, reward, terminated, truncated, info = self.env.step(env_action)
        except Exception as err:  # noqa: BLE001 - grading or the runtime broke under the env
            where = f"step {self.trajectory.num_turns} failed"
            if self.swe is None:  # a plug-in's own bug: its traceback is what its author needs
                where += f" in {_env_id(self.env)}:\n{traceback.format_exc(limit=12)}"
            raise _Done("env_error", f"{where}: {type(err).__name__}: {err}", infrastructure=True) from err
        finally:
            self.timings["env"] += time.monotonic() - started
        if not isinstance(observation, str):
            raise _Done("env_error", f"{_env_id(self.env)}: step() returned a {type(observation).__name__}, not text")
        info = dict(info or {})
        self.timings["commands"] += info.get("command_s", 0.0)
        call_id = out.tool_calls[0].get("id") if self.config.tool_format == "openai" and out.tool_calls else None
        self.add("tool" if call_id else "user", observation, tool_call_id=call_id)
        self.context_tokens += self.estimate(observation)
        if "reward_result" in info:
            self.record_reward(info["reward_result"], reward)
        elif self.swe is None and (terminated or truncated):
            self.record_text_reward(reward, info)
        if self.on_turn is not None:
            self.on_turn(self.trajectory)
        if info.get("env_error"):  # the container was removed or the engine failed: nothing the agent can do
            raise _Done("env_error", info["env_error"], infrastructure=True)
        if terminated:
            raise _Done("submitted")
        if truncated or (self.swe is None and self.trajectory.num_turns >= self.config.max_turns):
            raise _Done("out_of_turns")  # a text env keeps its own budget too; the agent's is the cap
        if out.finish_reason == "length" and self.context_tokens_left() < MIN_ROOM_TOKENS:
            raise _Done("out_of_context")

    def finish(self, started: float) -> None:
        """Grade an aborted episode if asked, then fill in the reward, diff, timings and end time."""
        trajectory = self.trajectory
        trajectory.termination = self.termination
        if not self.graded and self.termination in ("out_of_context", "policy_error") and self.config.grade_on_abort:
            self.grade_now()
        if not trajectory.reward_details and self.swe is not None:
            trajectory.reward = self.swe.reward_config.unresolved
        try:
            trajectory.diff = self.swe.diff() if self.swe is not None and self.swe.runtime is not None else ""
        except Exception:  # noqa: BLE001 - a dead runtime has no diff to show
            trajectory.diff = ""
        trajectory.timings = {**self.timings, "total": time.monotonic() - started}
        trajectory.finished_at = _now()
        trajectory.metadata["token_counts_estimated"] = self.estimated

    # -- bookkeeping ---------------------------------------------------------------------------
    def add(self, role: str, content: str, **fields: Any) -> TrajectoryMessage:
        message = TrajectoryMessage(role=role, content=content, **fields)
        self.trajectory.messages.append(message)
        return message

    def chat(self) -> list[Message]:
        return [m.chat() for m in self.trajectory.messages]

    def estimate(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def record_output(self, out: PolicyOutput, action: ToolCall | None, error: str | None) -> TrajectoryMessage:
        """Attribute the prompt's new tokens to the last message, then append the assistant message."""
        retokenized = False
        if out.prompt_token_ids is not None:
            prefix = self.prefix_ids or []
            if out.prompt_token_ids[: len(prefix)] == prefix:
                self.trajectory.messages[-1].token_ids = out.prompt_token_ids[len(prefix):]
            else:  # the backend rendered the conversation again and the history's tokens changed
                retokenized = True
                self.trajectory.messages[-1].token_ids = None
        message = self.add(
            "assistant", out.text, token_ids=out.token_ids, logprobs=out.logprobs, loss_mask=1,
            policy_version=out.policy_version, finish_reason=out.finish_reason, retokenized=retokenized,
            action=action.model_dump() if action else None, tool_calls=out.tool_calls, action_error=error,
        )
        if out.prompt_token_ids is not None and out.token_ids is not None and not retokenized:
            self.prefix_ids = out.prompt_token_ids + out.token_ids
        else:
            self.prefix_ids = None
        completion = len(out.token_ids) if out.token_ids is not None else out.completion_tokens
        prompt = len(out.prompt_token_ids) if out.prompt_token_ids is not None else out.prompt_tokens
        if prompt:
            chars = sum(len(m.content) for m in self.trajectory.messages[:-1])
            self.chars_per_token = max(min(chars / prompt, self.config.chars_per_token), 0.5)
        if completion is None or prompt is None:
            self.estimated = True
            completion = completion if completion is not None else self.estimate(out.text)
            prompt = prompt if prompt is not None else self.context_tokens
        self.trajectory.completion_tokens += completion
        self.trajectory.prompt_tokens = prompt
        self.context_tokens = prompt + completion
        return message

    def record_reward(self, result: RewardResult, reward: float) -> None:
        """The trajectory's reward and its JSON `reward_details` (the log cut to its tail)."""
        trajectory = self.trajectory
        trajectory.reward = float(reward)
        trajectory.resolved = result.resolved
        details = result.to_dict()
        log_text = details.pop("log") or ""
        trajectory.reward_details = {**details, "log_tail": log_text[-LOG_TAIL_CHARS:]}
        self.timings["grade"] += result.duration_s
        self.timings["tests"] += result.tests_s
        self.graded = True

    def record_text_reward(self, reward: Any, info: dict[str, Any]) -> None:
        """A plug-in env's final reward: a real number, or the episode is the env's error."""
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise _Done("env_error", f"{_env_id(self.env)} returned a reward that is not a finite number: "
                                     f"{reward!r} ({type(reward).__name__})")
        self.trajectory.reward = float(reward)
        self.trajectory.resolved = bool(info.get("resolved", reward > 0))
        details = info.get("reward_details")
        self.trajectory.reward_details = dict(details) if isinstance(details, dict) else {"reward": float(reward)}
        self.graded = True

    def grade_now(self) -> None:
        if self.swe is None or self.swe.runtime is None or self.swe.task is None:
            return
        try:
            result = self.swe.grade()
        except Exception as err:  # noqa: BLE001 - keep the episode's record even if grading fails
            self.trajectory.error = f"{self.trajectory.error or ''}\ngrading failed: {err}".strip()
            return
        self.record_reward(result, result.reward)


def _env_id(env: gym.Env[Any, Any]) -> str:
    """The env's Gymnasium id, or its class name when it was not made by id."""
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _parse(out: PolicyOutput, tool_format: str) -> tuple[ToolCall | None, str | None, str | ToolCall]:
    """(action, error, what to hand the env): the env re-raises the error as the observation."""
    if tool_format == "openai" and out.tool_calls:
        if len(out.tool_calls) != 1:
            return None, f"got {len(out.tool_calls)} tool calls; make exactly one tool call per turn", \
                json.dumps({"tool_calls": out.tool_calls})
        function = out.tool_calls[0].get("function") or {}
        try:
            arguments = function.get("arguments") or "{}"
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            call = ToolCall(name=str(function.get("name")), arguments=arguments)
        except (ValueError, RecursionError) as err:  # bad JSON, JSON nested past the recursion limit
            return None, f"the tool call's arguments are not valid JSON: {err}", json.dumps(out.tool_calls[0])
        return call, None, call
    try:
        call = parse_action(out.text)
    except ActionError as err:
        return None, str(err), out.text
    return call, None, call
