"""Collect trajectories: many episodes at once, resumable, every finished one saved at once.

On one machine, worker threads each own an environment (a container per episode) and share one
policy; with a Ray address, Ray actors across the cluster run the episodes and the driver writes.
A run killed in any way and started again with the same command runs only the (task, sample)
pairs that are missing.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from forager.agent.config import AgentConfig
from forager.agent.loop import make_env, run_episode
from forager.trajectories.store import TrajectoryWriter
from forager.core import ForagerError, Policy, Task, Trajectory
from forager.files import atomic_write_text
from forager.runtime.pool import WarmPool

RUN_FILE = "collection.json"


class PolicySpec(BaseModel):
    """A policy by name and options: what workers (threads or Ray actors) build their policy from."""

    model_config = ConfigDict(extra="forbid")
    name: str = "reference"
    options: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> Policy:
        from forager.policies import make_policy

        return make_policy(self.name, **self.options)

    def public(self) -> dict[str, Any]:
        """The spec without secrets (API keys), for the run file."""
        return {"name": self.name, "options": {k: ("***" if "key" in k.lower() else v)
                                               for k, v in self.options.items()}}


class CollectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples_per_task: int = Field(1, ge=1)
    """Episodes per task (a GRPO group is the samples of one task)."""
    workers: int = Field(1, ge=1)
    """Episodes running at once (each with its own container)."""
    runtime: str = "auto"
    """`docker`, `local`, or `auto` (Docker when the task's image is there)."""
    ray_address: str | None = None
    """Run the episodes on a Ray cluster (`auto`, `ray://host:10001`, or `local` for a new local one)."""
    reward: dict[str, Any] = Field(default_factory=dict)
    """RewardConfig fields (e.g. `{"unresolved": -1.0}`)."""
    docker_limits: dict[str, Any] = Field(default_factory=dict)
    warm_pool: int = Field(0, ge=0)
    """Containers kept started ahead per image, so resets and gradings do not wait for `docker run`."""


@dataclass
class CollectStats:
    """What a collection has done so far (updated after every episode)."""

    total: int = 0
    already_done: int = 0
    done: int = 0
    resolved: int = 0
    turns: int = 0
    completion_tokens: int = 0
    terminations: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    time_in: Counter = field(default_factory=Counter)
    """Seconds summed over episodes: `total`, `policy`, `reset`, `env`, `commands`, `grade`, `tests`."""
    errors: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    """Trajectory ids of the episodes that did not resolve their task."""

    def add(self, trajectory: Trajectory) -> None:
        self.done += 1
        self.resolved += trajectory.resolved
        self.turns += trajectory.num_turns
        self.completion_tokens += trajectory.completion_tokens
        self.terminations[trajectory.termination] += 1
        if not trajectory.resolved:
            self.unresolved.append(trajectory.trajectory_id)
        self.time_in.update(trajectory.timings)
        if trajectory.error and trajectory.termination in ("crashed", "env_error", "policy_error"):
            self.errors.append(f"{trajectory.trajectory_id}: {trajectory.termination}: "
                               f"{trajectory.error.strip().splitlines()[-1][:300]}")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def resolved_share(self) -> float:
        return self.resolved / self.done if self.done else 0.0

    @property
    def mean_turns(self) -> float:
        return self.turns / self.done if self.done else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"episodes": self.done, "skipped_already_done": self.already_done, "total": self.total,
                "resolved": self.resolved, "resolved_share": round(self.resolved_share, 4),
                "mean_turns": round(self.mean_turns, 2), "completion_tokens": self.completion_tokens,
                "tokens_per_s": round(self.tokens_per_s, 2), "terminations": dict(self.terminations),
                "wall_s": round(self.elapsed, 3), "time_in_s": {k: round(v, 3) for k, v in self.time_in.items()},
                "errors": self.errors[:20]}


def _fingerprint(policy: PolicySpec, agent: AgentConfig) -> str:
    blob = json.dumps({"policy": policy.public(), "agent": agent.model_dump()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_run_file(out: Path, policy: PolicySpec, agent: AgentConfig, tasks_source: str, config: CollectConfig,
                    allow_mixed: bool) -> None:
    """Refuse to mix trajectories of different policies or prompts in one directory (unless asked)."""
    path = out / RUN_FILE
    fingerprint = _fingerprint(policy, agent)
    if path.exists() and not allow_mixed:
        previous = json.loads(path.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise ForagerError(
                f"{out} holds trajectories of another policy or agent configuration (was {previous.get('policy')}); "
                "resume with the same options, use another --out, or pass --allow-mixed"
            )
    record = {"fingerprint": fingerprint, "policy": policy.public(), "agent": agent.model_dump(),
              "tasks": tasks_source, "samples_per_task": config.samples_per_task}
    atomic_write_text(path, json.dumps(record, indent=2, default=str))


def collect(
    tasks: list[Task],
    out_dir: str | Path,
    *,
    policy: PolicySpec | None = None,
    agent: AgentConfig | None = None,
    config: CollectConfig | None = None,
    tasks_source: str = "",
    allow_mixed: bool = False,
    on_start: Callable[[CollectStats], None] | None = None,
    on_episode: Callable[[Trajectory, CollectStats], None] | None = None,
    stop: threading.Event | None = None,
) -> CollectStats:
    """Run every missing (task, sample) pair and append its trajectory to `out_dir/trajectories.jsonl`.

    `stop` set (say, on Ctrl-C) means: start no new episode, finish the running ones.
    """
    policy = policy or PolicySpec()
    agent = agent or AgentConfig()
    config = config or CollectConfig()
    stop = stop or threading.Event()
    ids = [t.instance_id for t in tasks]
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    if duplicated:
        raise ForagerError(f"task ids must be unique; repeated: {', '.join(duplicated[:5])}")
    out = Path(out_dir)
    with TrajectoryWriter(out) as writer:
        _check_run_file(out, policy, agent, tasks_source, config, allow_mixed)
        done = writer.done()
        pending = [(task, k) for k in range(config.samples_per_task) for task in tasks
                   if (task.instance_id, k) not in done]
        stats = CollectStats(total=len(tasks) * config.samples_per_task)
        stats.already_done = stats.total - len(pending)
        if on_start:
            on_start(stats)
        lock = threading.Lock()

        def finished(trajectory: Trajectory) -> None:
            writer.append(trajectory)
            with lock:
                stats.add(trajectory)
                if on_episode:
                    on_episode(trajectory, stats)

        if config.ray_address:
            from forager.agent.ray_collect import run_on_ray

            run_on_ray(pending, policy, agent, config, finished, stop)
        else:
            _run_threads(pending, policy, agent, config, finished, stop)
    return stats


def _run_threads(pending: list[tuple[Task, int]], policy_spec: PolicySpec, agent: AgentConfig,
                 config: CollectConfig, finished: Callable[[Trajectory], None], stop: threading.Event) -> None:
    if not pending:
        return
    policy = policy_spec.build()
    work: queue.SimpleQueue[tuple[Task, int]] = queue.SimpleQueue()
    for item in pending:
        work.put(item)
    failures: list[BaseException] = []
    pool = WarmPool(config.warm_pool) if config.warm_pool and config.runtime != "local" else None

    def worker() -> None:
        env = make_env(agent, config.runtime, config.reward or None, config.docker_limits or None, pool or 0)
        try:
            while not stop.is_set():
                try:
                    task, sample = work.get_nowait()
                except queue.Empty:
                    return
                finished(run_episode(env, policy, task, agent, sample=sample))
        except BaseException as err:  # noqa: BLE001 - writing failed (disk full?): stop everyone, report it
            failures.append(err)
            stop.set()
        finally:
            env.close()

    threads = [threading.Thread(target=worker, name=f"forager-collect-{n}", daemon=True)
               for n in range(min(config.workers, len(pending)))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short joins keep the main thread responsive to Ctrl-C
    finally:
        if pool is not None:
            pool.close()
        close = getattr(policy, "close", None)
        if callable(close):
            close()
    if failures:
        raise ForagerError(f"collection stopped: {type(failures[0]).__name__}: {failures[0]}") from failures[0]
