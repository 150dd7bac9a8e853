"""Rollout workers: episodes of groups of G per task, sampled from the engine, saved, and handed to the buffer.

`concurrency` threads each own one episode slot: an env on this machine (a container per episode, from the
warm pool when there is one), or, with a Ray address, one Ray actor somewhere in the cluster. A thread
takes the next slot of an open group (or, admitted by the buffer, opens the next group of the task
cursor), runs the episode with the agent loop (`run_episode`, the same function `forager collect` runs,
here or in the actor), appends the trajectory to the run's trajectory store (`<run_dir>/trajectories.jsonl`,
what `forager collect` writes, so `forager view`/`export` read a training run; infrastructure failures go
to `infra_failures/` as in a collection) and, when a group's G episodes have all ended, puts the group in
the buffer. Rollouts never wait for the learner, only for the buffer's admission (back-pressure, and the
synchronous mode's gate).

The engine (threads): any `Engine`/`Policy` object in this process; every assistant turn records the
version the engine had when it sampled, so a weight update in the middle of an episode shows per turn.
Ray: the actors cannot reach an object in this process, so an in-process engine (`hf`, `remote`) is refused
with threads as the way out; give a `PolicySpec` that each actor builds instead, for an engine reachable by
address (`openai` with the base_url of a server the trainer updates). Its version is what
`set_policy_version` last told the actors.

Stopping (`stop()`, Ctrl-C through a `with` block): no new episode starts, running ones get `wait_s` to end,
then their envs are closed under them; the envs, the warm pool and the store are closed. SIGTERM: the
runtimes' live registry closes every runtime and removes this process's containers, the threads are daemons.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from forager.agent.collect import LazyWriter
from forager.agent.loop import make_pool, make_worker_env
from forager.agent.config import AgentConfig, CollectConfig, load_agent_config
from forager.agent.loop import run_episode
from forager.core import ForagerError, Policy, Task, Trajectory
from forager.policies.spec import PolicySpec
from forager.runtime.pool import WarmPool
from forager.trajectories.store import INFRA_FAILURES, TrajectoryWriter, is_infrastructure_failure
from forager.train.buffer import RolloutBuffer
from forager.train.cursor import OpenGroup, TaskCursor

if TYPE_CHECKING:
    from forager.train.config import TrainConfig

log = logging.getLogger(__name__)

ABORTED_EPISODE_S = 60.0
"""How long an episode whose env was closed under it may take to notice and end (its policy call finishes first)."""
IN_PROCESS_ENGINE_ON_RAY = (
    "the engine is an object in this process, which Ray actors cannot reach: run the rollouts on threads "
    "(ray_address: null), or give a policy spec the actors build themselves, for an engine reachable by "
    "address (PolicySpec(name='openai', options={'base_url': ..., 'model': ...}))")


def agent_config(config: TrainConfig) -> AgentConfig:
    """The agent's prompts from `env.agent_config` (or the defaults), with the run's episode budgets."""
    env = config.env
    return load_agent_config(env.agent_config, max_turns=env.max_turns, max_context_tokens=env.max_context_tokens,
                             max_tokens_per_turn=env.max_tokens_per_turn, command_timeout=env.command_timeout,
                             max_output_bytes=env.max_output_bytes)


def collect_config(config: TrainConfig) -> CollectConfig:
    """Where and how episodes run: the env section's runtime, reward, limits, warm pool and Docker hosts; Ray from
    the run."""
    env = config.env
    return CollectConfig(samples_per_task=config.rollout.group_size, workers=config.rollout.concurrency,
                         runtime=env.runtime, ray_address=config.ray_address, reward=env.reward,
                         docker_limits=env.docker_limits, warm_pool=env.warm_pool, env_id=env.id,
                         docker_hosts=env.docker_hosts)


class _LocalSlot:
    """An episode slot on this machine: one env, reset onto each episode's task."""

    def __init__(self, policy: Policy, agent: AgentConfig, collect: CollectConfig, pool: WarmPool | None) -> None:
        self.policy, self.agent = policy, agent
        self.env = make_worker_env(agent, collect, pool)

    def run(self, task: Task | str, sample: int) -> Trajectory:
        return run_episode(self.env, self.policy, task, self.agent, sample=sample)

    def expect(self, task: Task | str, count: int) -> None:
        """A group's other episodes are coming: the warm pool (if any) checks their containers out now."""
        if isinstance(task, Task) and hasattr(self.env, "expect"):
            self.env.expect(task, count)

    def abort(self) -> None:
        self.env.close()  # the running episode's next step fails as an env_error and it ends

    def close(self) -> None:
        self.env.close()


class RolloutWorkers:
    """`concurrency` episode slots sampling groups for the buffer until stopped; see the module's docstring."""

    def __init__(self, tasks: Sequence[Task] | Sequence[str], buffer: RolloutBuffer, run_dir: str | Path, *,
                 engine: Policy | None = None, policy_spec: PolicySpec | None = None,
                 agent: AgentConfig | None = None, collect: CollectConfig | None = None, concurrency: int = 1,
                 seed: int = 0, cursor_state: dict[str, Any] | None = None) -> None:
        """`engine` (threads) or `policy_spec` (built once here, or by each Ray actor); `collect`: runtime, reward,
        limits, warm pool and `ray_address`; `cursor_state`: a `state()` saved by an earlier run to resume."""
        self.collect = collect or CollectConfig()
        self.ray_address = self.collect.ray_address
        if self.ray_address and engine is not None:
            raise ForagerError(IN_PROCESS_ENGINE_ON_RAY)
        if engine is None and policy_spec is None:
            raise ForagerError("the rollout needs an engine (threads) or a policy spec (threads or Ray)")
        if self.ray_address and policy_spec is not None and policy_spec.name == "hf":
            raise ForagerError("an `hf` policy in each Ray actor would never get the learner's weights: "
                               f"{IN_PROCESS_ENGINE_ON_RAY}")
        if concurrency < 1:
            raise ForagerError(f"rollout concurrency must be at least 1, got {concurrency}")
        self.tasks, self.buffer, self.run_dir = list(tasks), buffer, Path(run_dir)
        self.engine, self.policy_spec = engine, policy_spec
        self.agent = agent or AgentConfig()
        self.concurrency, self.seed, self.cursor_state = concurrency, seed, cursor_state
        self.cursor: TaskCursor | None = None
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._slots: list[Any] = []
        self._resources = contextlib.ExitStack()
        self._policy: Policy | None = engine
        self._pool: WarmPool | None = None
        self._ray: Any = None
        self._writer: TrajectoryWriter | None = None
        self._infra: LazyWriter | None = None

    @classmethod
    def from_config(cls, config: TrainConfig, tasks: Sequence[Task] | Sequence[str], buffer: RolloutBuffer, *,
                    engine: Policy | None = None, policy_spec: PolicySpec | None = None,
                    cursor_state: dict[str, Any] | None = None) -> RolloutWorkers:
        return cls(tasks, buffer, config.out_dir, engine=engine, policy_spec=policy_spec, agent=agent_config(config),
                   collect=collect_config(config), concurrency=config.rollout.concurrency, seed=config.seed,
                   cursor_state=cursor_state)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> RolloutWorkers:
        """Open the store (resuming the cursor from it), the engine or Ray, and start the threads."""
        if self._threads or self._stop.is_set():
            raise ForagerError("rollout workers start once: make new ones (cursor_state=old.state()) to go on")
        try:
            self._writer = self._resources.enter_context(TrajectoryWriter(self.run_dir))
            self._infra = self._resources.enter_context(LazyWriter(self.run_dir / INFRA_FAILURES))
            stored = _stored_since(self._writer.path, (self.cursor_state or {}).get("store_offset", 0)) \
                if self.cursor_state else {}
            self.cursor = TaskCursor(self.tasks, self.buffer.group_size, seed=self.seed, state=self.cursor_state,
                                     stored=stored)
            self._open_backend()
        except BaseException:
            self._release()
            raise
        self._threads = [threading.Thread(target=self._work, name=f"forager-rollout-{n}", daemon=True)
                         for n in range(self.concurrency)]
        for thread in self._threads:
            thread.start()
        return self

    def _open_backend(self) -> None:
        if self.ray_address:
            from forager.train.ray_rollout import RayBackend

            backend = RayBackend(self.ray_address, self.policy_spec, self.agent, self.collect)
            self._ray = backend
            self._resources.callback(_quietly, backend.shutdown)
            return
        if self._policy is None:
            assert self.policy_spec is not None
            self._policy = self.policy_spec.build()
            close = getattr(self._policy, "close", None)
            if callable(close):
                self._resources.callback(_quietly, close)
        self._pool = make_pool(self.collect)
        if self._pool is not None:
            self._resources.callback(_quietly, self._pool.close)

    def stop(self, wait_s: float = 60.0) -> None:
        """Start nothing new; give running episodes `wait_s` to end, then close their envs under them; free it all."""
        self._stop.set()
        self.buffer.wake()
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            log.warning("rollout episodes still running after %.0f s: closing their envs", wait_s)
            with self._lock:
                slots = list(self._slots)
            for slot in slots:
                _quietly(slot.abort)
            for thread in self._threads:
                thread.join(ABORTED_EPISODE_S)
        if not any(thread.is_alive() for thread in self._threads) and self.cursor is not None:
            for _ in self.cursor.open_groups():
                self.buffer.abandon()  # admitted, never finished: the cursor runs them again on resume
        self._threads = []
        self._release()

    def _release(self) -> None:
        _quietly(self._resources.close)
        self._resources = contextlib.ExitStack()

    def __enter__(self) -> RolloutWorkers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the loop asks ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def check(self) -> None:
        """Raise the first failure of a worker (they all stop on one, and the buffer is closed)."""
        if self.failures:
            error = self.failures[0]
            raise ForagerError(f"the rollout stopped: {type(error).__name__}: {error}") from error

    def state(self) -> dict[str, Any]:
        """The task cursor's state for a checkpoint (`cursor_state=` resumes from it)."""
        if self.cursor is None:
            raise ForagerError("the rollout workers were never started: no cursor state yet")
        size = self._writer.path.stat().st_size if self._writer and self._writer.path.exists() else 0
        return self.cursor.state(size)

    def set_policy_version(self, version: int) -> None:
        """Tell policies that cannot know it (an OpenAI server's client, the Ray actors') the engines' version.

        An engine object given to the threads knows its own version (`update_weights`): it is left alone."""
        if self._ray is not None:
            self._ray.set_policy_version(version)
        elif self.engine is None and self._policy is not None and hasattr(self._policy, "policy_version"):
            self._policy.policy_version = version  # type: ignore[attr-defined]

    # -- the threads -----------------------------------------------------------------------------------
    def _work(self) -> None:
        slot = None
        try:
            slot = self._ray.slot() if self._ray is not None else \
                _LocalSlot(self._policy, self.agent, self.collect, self._pool)  # type: ignore[arg-type]
            with self._lock:
                self._slots.append(slot)
            while not self._stop.is_set():
                item = self._next_episode(slot)
                if item is None:
                    return
                group, index = item
                trajectory = slot.run(group.task, group.samples[index])
                self._finished(group, index, trajectory)
        except BaseException as err:  # noqa: BLE001 - kept for check(); every worker stops, the learner wakes
            log.exception("rollout worker failed")
            self.failures.append(err)
            self._stop.set()
            self.buffer.close()
        finally:
            if slot is not None:
                _quietly(slot.close)

    def _next_episode(self, slot: Any) -> tuple[OpenGroup, int] | None:
        """A slot of an open group, else the next group once the buffer admits it (its other episodes
        announced to the warm pool through `slot`); None when stopped."""
        assert self.cursor is not None and self._writer is not None
        while not self._stop.is_set():
            taken = self.cursor.take_slot()
            if taken is not None:
                return taken
            if not self.buffer.admit(self._stop):
                return None
            size = self._writer.path.stat().st_size if self._writer.path.exists() else 0
            group, index = self.cursor.open_group(size)
            if index is not None:
                if self._pool is not None and hasattr(slot, "expect"):
                    slot.expect(group.task, len(group.todo))
                return group, index
            self._complete(self.cursor.record(group, None, None))  # every member was in the store already
        return None

    def _finished(self, group: OpenGroup, index: int, trajectory: Trajectory) -> None:
        assert self.cursor is not None and self._writer is not None and self._infra is not None
        trajectory.metadata["group"] = group.index
        infrastructure = is_infrastructure_failure(trajectory)
        (self._infra if infrastructure else self._writer).append(trajectory)
        if infrastructure and self._stop.is_set():
            return  # ended by stop() closing its env: the group stays open, and a resumed run samples it again
        self._complete(self.cursor.record(group, index, trajectory, infrastructure))

    def _complete(self, finished: Any) -> None:
        if finished is not None:
            self.buffer.put(finished)


def _stored_since(path: Path, offset: int) -> dict[str, Trajectory]:
    """The trajectories appended to the store at `path` from byte `offset` on, by id (for a resumed cursor)."""
    found: dict[str, Trajectory] = {}
    if not path.exists():
        return found
    with path.open("rb") as store:
        store.seek(offset)
        for line in store:
            if not line.endswith(b"\n"):
                break  # an unfinished last line: the writer cut it when it opened
            try:
                trajectory = Trajectory.model_validate_json(line)
            except ValidationError:
                log.warning("%s: a line after byte %d is not a trajectory; it is sampled again", path, offset)
                continue
            found[trajectory.trajectory_id] = trajectory
    return found


def _quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception:  # noqa: BLE001 - freeing the rest matters more than one failure to free
        log.warning("closing a rollout resource failed", exc_info=True)
