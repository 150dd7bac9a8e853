"""The rollout's episode slots as Ray actors: the collection's actor, told the engines' policy version.

Each slot is one `forager.agent.ray_collect.RolloutWorker` actor (its own env, warm pool and policy, built
from the PolicySpec), so an episode runs through the same `run_episode` as on threads, wherever Ray puts
it. The actor is threaded (two calls at once) so that `set_policy_version` reaches the policy while an
episode runs, and `close` can end an episode from under it when the workers stop.
"""

from __future__ import annotations

import logging
from typing import Any

from forager.agent.config import AgentConfig, CollectConfig
from forager.agent.ray_collect import RolloutWorker, worker_env_vars
from forager.core import ForagerError, Task, Trajectory
from forager.policies.spec import PolicySpec

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 120.0


class TrainRolloutWorker(RolloutWorker):
    """The collection's actor, whose policy can be told which weights the engines serve now."""

    def set_policy_version(self, version: int) -> None:
        self.policy.policy_version = version  # type: ignore[attr-defined] - read as each request leaves


class RaySlot:
    """One episode slot: one actor, one episode at a time."""

    def __init__(self, ray: Any, actor: Any) -> None:
        self.ray, self.actor = ray, actor

    def run(self, task: Task | str, sample: int) -> Trajectory:
        wire = task.model_dump() if isinstance(task, Task) else task
        return Trajectory.from_json(self.ray.get(self.actor.run.remote(wire, sample)))

    def abort(self) -> None:
        self.actor.close.remote()  # closes the env under the running episode, which then ends

    def close(self) -> None:
        """Close the actor's env and pool, then kill it (also when it is already dead)."""
        try:
            self.ray.get(self.actor.close.remote(), timeout=CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a dead actor has nothing left to close; `forager gc` finds the rest
            log.warning("a rollout actor did not close cleanly", exc_info=True)
        self.ray.kill(self.actor)


class RayBackend:
    """Ray, initialised here unless the caller did, and the actor class the slots are made of."""

    def __init__(self, address: str, policy_spec: PolicySpec | None, agent: AgentConfig,
                 collect: CollectConfig) -> None:
        try:
            import ray
        except ImportError as err:
            raise ForagerError("ray_address needs Ray: pip install 'forager[train]'") from err
        if policy_spec is None:
            raise ForagerError("rollouts on Ray need a policy spec the actors build (see forager.train.rollout)")
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": worker_env_vars()})
        self.actor_class = ray.remote(num_cpus=0.1, max_concurrency=2)(TrainRolloutWorker)
        self.args = (policy_spec.model_dump(), agent.model_dump(), collect.model_dump())
        self.version: int | None = None
        self.actors: list[Any] = []

    def slot(self) -> RaySlot:
        actor = self.actor_class.remote(*self.args)
        if self.version is not None:
            actor.set_policy_version.remote(self.version)
        self.actors.append(actor)
        return RaySlot(self.ray, actor)

    def set_policy_version(self, version: int) -> None:
        """Tell every actor, and wait until each has it: the next request any of them sends names `version`."""
        self.version = version
        calls = [actor.set_policy_version.remote(version) for actor in list(self.actors)]
        try:
            self.ray.get(calls, timeout=CLOSE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a dead actor's slot fails its next episode and says why
            log.warning("a rollout actor did not take policy version %d", version, exc_info=True)

    def shutdown(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
