"""The ForagerAgent loop: a policy acts in a SWEEnv until it submits or a budget runs out.

Every episode ends with a Trajectory and a termination reason, whatever happens: a policy that
errors, an environment that dies, or a bug in Forager itself (`crashed`, with the traceback).
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from forager.core import (
    ContextLengthExceeded,
    ForagerError,
    Message,
    Policy,
    PolicyError,
    PolicyOutput,
    Task,
    Termination,
    ToolCall,
    Trajectory,
    TrajectoryMessage,
)
from forager.agent.config import AgentConfig
from forager.envs.swe import SWEEnv
from forager.envs.tools import TOOLS, ActionError, parse_action
from forager.runtime.pool import WarmPool

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_env(config: AgentConfig, runtime: str = "auto", reward: dict[str, Any] | None = None,
             docker_limits: dict[str, Any] | None = None, warm_pool: int | WarmPool = 0) -> SWEEnv:
    """A task-less SWEEnv with the agent's budgets; `run_episode` resets it onto each task."""
    return SWEEnv(tasks=[], runtime=runtime, max_turns=config.max_turns, command_timeout=config.command_timeout,
                  max_output_bytes=config.max_output_bytes, reward=reward, docker_limits=docker_limits,
                  warm_pool=warm_pool)


def _describe(policy: Policy) -> dict[str, Any]:
    """What produced the actions: the policy's own description, or its name and model."""
    describe = getattr(policy, "describe", None)
    if callable(describe):
        return dict(describe())
    model = getattr(policy, "model", None)
    return {"name": getattr(policy, "name", type(policy).__name__), **({"model": model} if isinstance(model, str) else {})}


class _Episode:
    """The state of one episode: the messages, the exact tokens so far, the clock."""

    def __init__(self, task: Task, sample: int, policy: Policy, config: AgentConfig) -> None:
        self.task, self.policy, self.config = task, policy, config
        self.trajectory = Trajectory(
            trajectory_id=f"{task.instance_id}#{sample}", task_id=task.instance_id, sample=sample, repo=task.repo,
            kind=task.kind, started_at=_now(),
            policy=_describe(policy),
        )
        self.timings = {"reset": 0.0, "policy": 0.0, "env": 0.0, "commands": 0.0, "grade": 0.0, "tests": 0.0}
        self.prefix_ids: list[int] | None = []
        """Exact tokens through the last assistant message; None once a turn's tokens are unknown."""
        self.context_tokens = 0
        self.estimated = False
        self.chars_per_token = config.chars_per_token
        """Calibrated on the policy's own token counts as soon as it reports them."""

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
            tool_call=action.model_dump() if action else None, tool_calls=out.tool_calls, action_error=error,
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


def _parse(out: PolicyOutput, tool_format: str) -> tuple[ToolCall | None, str | None, str | Any]:
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
        except (json.JSONDecodeError, ValueError) as err:
            return None, f"the tool call's arguments are not valid JSON: {err}", json.dumps(out.tool_calls[0])
        return call, None, call
    try:
        call = parse_action(out.text)
    except ActionError as err:
        return None, str(err), out.text
    return call, None, call


def run_episode(
    env: SWEEnv,
    policy: Policy,
    task: Task,
    config: AgentConfig | None = None,
    *,
    sample: int = 0,
    on_turn: Callable[[Trajectory], None] | None = None,
) -> Trajectory:
    """One episode of `policy` on `task` in `env`; always returns a Trajectory, never raises for a failed episode."""
    config = config or AgentConfig()
    episode = _Episode(task, sample, policy, config)
    trajectory = episode.trajectory
    started = time.monotonic()
    termination: Termination = "crashed"
    graded = False
    # The episode's budgets are the agent's, whatever the env was made with.
    env.max_turns, env.command_timeout, env.max_output_bytes = (
        config.max_turns, config.command_timeout, config.max_output_bytes)
    env.show_budget = config.budget_in_observation
    try:
        reset_started = time.monotonic()
        try:
            env.reset(options={"task": task})
        except ForagerError as err:
            raise _EnvError(f"reset failed: {err}") from err
        except Exception as err:  # Docker API errors and the like: the environment, not the agent
            raise _EnvError(f"reset failed: {type(err).__name__}: {err}") from err
        finally:
            episode.timings["reset"] = time.monotonic() - reset_started
        workdir = env.runtime.workdir if env.runtime else task.workdir
        episode.add("system", config.render(config.system_prompt, task, workdir))
        episode.add("user", config.render(config.task_prompt, task, workdir))
        episode.context_tokens = episode.estimate(trajectory.messages[0].content + trajectory.messages[1].content)
        tools = [tool.openai_schema() for tool in TOOLS.values()] if config.tool_format == "openai" else None

        while True:
            room = config.max_context_tokens - episode.context_tokens
            if room < 16:
                termination = "out_of_context"
                break
            policy_started = time.monotonic()
            try:
                out = policy.act(episode.chat(), task=task, prefix_token_ids=episode.prefix_ids or None,
                                 max_tokens=min(config.max_tokens_per_turn, room), tools=tools)
            except ContextLengthExceeded as err:
                termination, trajectory.error = "out_of_context", str(err)
                break
            except PolicyError as err:
                termination, trajectory.error = "policy_error", str(err)
                break
            finally:
                episode.timings["policy"] += time.monotonic() - policy_started
            action, error, env_action = _parse(out, config.tool_format)
            episode.record_output(out, action, error)
            trajectory.num_turns += 1
            if episode.context_tokens > config.max_context_tokens:  # the estimate was short; stop here
                termination = "out_of_context"
                break

            env.context_tokens_left = config.max_context_tokens - episode.context_tokens
            env_started = time.monotonic()
            try:
                observation, reward, terminated, truncated, info = env.step(env_action)
            except Exception as err:  # noqa: BLE001 - grading or the runtime broke under the env
                raise _EnvError(f"step {trajectory.num_turns} failed: {type(err).__name__}: {err}") from err
            finally:
                episode.timings["env"] += time.monotonic() - env_started
            episode.timings["commands"] += info.get("command_s", 0.0)
            call_id = (out.tool_calls[0].get("id") if config.tool_format == "openai" and out.tool_calls else None)
            episode.add("tool" if call_id else "user", observation, tool_call_id=call_id)
            episode.context_tokens += episode.estimate(observation)
            if "reward_details" in info:
                _record_reward(episode, reward, info["reward_details"])
                graded = True
            if on_turn is not None:
                on_turn(trajectory)
            if info.get("env_error"):
                termination, trajectory.error = "env_error", info["env_error"]
                break
            if terminated:
                termination = "submitted"
                break
            if truncated:
                termination = "out_of_turns"
                break
            if out.finish_reason == "length" and config.max_context_tokens - episode.context_tokens < 16:
                termination = "out_of_context"
                break
    except _EnvError as err:
        termination, trajectory.error = "env_error", str(err)
    except Exception:  # noqa: BLE001 - a bug: the trajectory is still saved, with the traceback
        termination, trajectory.error = "crashed", traceback.format_exc(limit=8)
        log.exception("episode %s crashed", trajectory.trajectory_id)
    finally:
        trajectory.termination = termination
        if not graded and termination in ("out_of_context", "policy_error") and config.grade_on_abort:
            _grade_now(env, episode)
        if not trajectory.reward_details:
            trajectory.reward = env.reward_config.unresolved
        try:
            trajectory.diff = env.diff() if env.runtime is not None else ""
        except Exception:  # noqa: BLE001 - a dead runtime has no diff to show
            trajectory.diff = ""
        trajectory.timings = {**episode.timings, "total": time.monotonic() - started}
        trajectory.finished_at = _now()
        trajectory.metadata["token_counts_estimated"] = episode.estimated
    return trajectory


class _EnvError(Exception):
    pass


def _record_reward(episode: _Episode, reward: float, details: dict[str, Any]) -> None:
    trajectory = episode.trajectory
    trajectory.reward = float(reward)
    trajectory.resolved = bool(details.get("resolved"))
    trajectory.reward_details = {k: v for k, v in details.items() if k != "log"}
    trajectory.reward_details["log_tail"] = (details.get("log") or "")[-4000:]
    episode.timings["grade"] += details.get("duration_s", 0.0)
    episode.timings["tests"] += details.get("tests_s", 0.0)


def _grade_now(env: SWEEnv, episode: _Episode) -> None:
    if env.runtime is None or env.task is None:
        return
    try:
        result = env.grade()
    except Exception as err:  # noqa: BLE001 - keep the episode's record even if grading fails
        episode.trajectory.error = f"{episode.trajectory.error or ''}\ngrading failed: {err}".strip()
        return
    _record_reward(episode, result.reward, result.to_dict())
