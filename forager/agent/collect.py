"""Collect trajectories: many episodes at once, resumable, every finished one saved at once.

On one machine, worker threads each own an environment (a container per episode) and share one
policy; with a Ray address, Ray actors across the cluster run the episodes and the driver writes.
A run killed in any way and started again with the same command runs only the (task, sample)
pairs that are missing.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forager.agent.config import AgentConfig, CollectConfig
from forager.agent.loop import host_gone, make_pool, make_worker_env, run_episode
from forager.agent.text_envs import prepare_tasks
from forager.agent.ray_collect import run_on_ray
from forager.core import ForagerError, Task, Trajectory
from forager.envs.swe import SWEEnv
from forager.files import atomic_write_text
from forager.policies.spec import PolicySpec
from forager.runtime.engine import check_docker_hosts
from forager.trajectories.store import INFRA_FAILURES, OutputLocked, TrajectoryWriter, is_infrastructure_failure
from forager.workers import run_workers

RUN_FILE = "collection.json"


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
    infra_failures: int = 0
    """Episodes the infrastructure failed (saved apart, retried by the next run); not in the figures above."""
    unresolved: list[str] = field(default_factory=list)
    """Trajectory ids of the episodes that did not resolve their task."""

    def add(self, trajectory: Trajectory) -> None:
        if trajectory.error and trajectory.termination in ("crashed", "env_error", "policy_error"):
            self.errors.append(f"{trajectory.trajectory_id}: {trajectory.termination}: "
                               f"{trajectory.error.strip().splitlines()[-1][:300]}")
        if is_infrastructure_failure(trajectory):
            self.infra_failures += 1
            return
        self.done += 1
        self.resolved += trajectory.resolved
        self.turns += trajectory.num_turns
        self.completion_tokens += trajectory.completion_tokens
        self.terminations[trajectory.termination] += 1
        if not trajectory.resolved:
            self.unresolved.append(trajectory.trajectory_id)
        self.time_in.update(trajectory.timings)

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
                "infra_failures": self.infra_failures, "errors": self.errors[:20]}


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
    tasks: list[Task] | list[str],
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
    handle_sigint: bool = False,
    on_stopping: Callable[[], None] | None = None,
) -> CollectStats:
    """Run every missing (task, sample) pair and append its trajectory to `out_dir/trajectories.jsonl`.

    `tasks` are Tasks for forager/SWE-v0 or the SWE environment `config.env_id` (which makes them its own:
    `SWEEnv.prepare_tasks`), or task ids of the text environment `config.env_id` (`text_env_tasks`).

    `stop` set (say, on Ctrl-C) means: start no new episode, finish the running ones. With
    `handle_sigint` (main thread only) the first Ctrl-C sets it and calls `on_stopping`, the second
    raises KeyboardInterrupt; the same command resumes.
    """
    policy = policy or PolicySpec()
    agent = agent or AgentConfig()
    config = config or CollectConfig()
    stop = stop or threading.Event()
    tasks = prepare_tasks(tasks, config)
    ids = [t.instance_id if isinstance(t, Task) else str(t) for t in tasks]
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    if duplicated:
        raise ForagerError(f"task ids must be unique; repeated: {', '.join(duplicated[:5])}")
    validate_policy(policy)  # before anything is written: a typo must not leave a run file behind
    if not config.text_env:
        check_docker_hosts(config.docker_hosts)  # likewise a host that does not answer
    out = Path(out_dir)
    guard = stop_on_sigint(stop, on_stopping) if handle_sigint else nullcontext()
    with guard, _open_writer(out) as writer, LazyWriter(out / INFRA_FAILURES) as failures:
        _check_run_file(out, policy, agent, tasks_source, config, allow_mixed)
        done = writer.done()
        pending = [(task, k) for k in range(config.samples_per_task) for task, task_id in zip(tasks, ids)
                   if (task_id, k) not in done]
        stats = CollectStats(total=len(tasks) * config.samples_per_task)
        stats.already_done = stats.total - len(pending)
        if on_start:
            on_start(stats)
        lock = threading.Lock()

        def finished(trajectory: Trajectory) -> None:
            # Not a sample of the policy: kept apart, so that done() leaves it to the next run.
            (failures if is_infrastructure_failure(trajectory) else writer).append(trajectory)
            with lock:
                stats.add(trajectory)
                if on_episode:
                    on_episode(trajectory, stats)

        if config.ray_address:
            run_on_ray(pending, policy, agent, config, finished, stop)
        else:
            _run_threads(pending, policy, agent, config, finished, stop)
    return stats


def _open_writer(out: Path) -> TrajectoryWriter:
    """The collection's writer, or an error naming the collection (or compose container) that holds `out`."""
    try:
        return TrajectoryWriter(out)
    except OutputLocked as err:
        stop = " (docker-compose down)" if err.holder.get("container") else ""
        raise ForagerError(f"another collection ({err.who}) is writing {out}; stop it{stop} or pick another "
                           "--out") from None


class LazyWriter:
    """A TrajectoryWriter opened on the first append, so a run without failures makes no directory for them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writer: TrajectoryWriter | None = None
        self._lock = threading.Lock()

    def append(self, trajectory: Trajectory) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = TrajectoryWriter(self.directory)
        self._writer.append(trajectory)

    def __enter__(self) -> LazyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()


def validate_policy(spec: PolicySpec) -> None:
    """Raise ForagerError unless the policy loads and takes its options (without building it: an `hf`
    policy would load its model here, and on Ray the actors build their own)."""
    from forager.loading import load_named
    from forager.policies import POLICIES

    cls = load_named(spec.name, POLICIES, "policy", plugins="policies")
    try:
        inspect.signature(cls).bind(**spec.options)
    except TypeError as err:
        raise ForagerError(f"policy {spec.name!r} does not take these options: {err}") from err
    except ValueError:  # no signature to check (a C type): building it will tell
        pass


@contextmanager
def stop_on_sigint(stop: threading.Event, on_stopping: Callable[[], None] | None = None) -> Iterator[None]:
    """While inside, the first Ctrl-C sets `stop` (running episodes finish); the second raises KeyboardInterrupt."""

    def interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if on_stopping:
            on_stopping()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_threads(pending: list[tuple[Task, int]], policy_spec: PolicySpec, agent: AgentConfig,
                 config: CollectConfig, finished: Callable[[Trajectory], None], stop: threading.Event) -> None:
    if not pending:
        return
    policy = policy_spec.build()
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(pending)):
        work.put(index)
    pool = make_pool(config)
    ahead = min(config.workers, len(pending))  # the episode a worker starts is announced a wave ahead
    numbers = itertools.count()

    def worker() -> None:
        number = next(numbers)
        env = make_worker_env(agent, config, pool, number)
        try:
            while not stop.is_set():
                try:
                    index = work.get_nowait()
                except queue.Empty:
                    return
                if index + ahead < len(pending) and isinstance(env, SWEEnv):
                    env.expect(pending[index + ahead][0])
                task, sample = pending[index]
                trajectory = run_episode(env, policy, task, agent, sample=sample)
                finished(trajectory)
                if is_infrastructure_failure(trajectory) and host_gone(config, number):
                    return
        except BaseException:  # writing failed (disk full?): stop everyone; run_workers hands the error back
            stop.set()
            raise
        finally:
            env.close()

    try:
        failures = run_workers(worker, min(config.workers, len(pending)), "forager-collect", daemon=True)
    finally:
        if pool is not None:
            pool.close()
        close = getattr(policy, "close", None)
        if callable(close):
            close()
    if failures:
        raise ForagerError(f"collection stopped: {type(failures[0]).__name__}: {failures[0]}") from failures[0]
