"""Collection on a Ray cluster: rollout workers are actors, the driver writes the trajectories.

Each actor builds its own policy from the PolicySpec (a policy holds connections or a model, which
do not travel) and its own environment, and runs one episode per call. Trajectories come back to
the driver as JSON and are appended there, so resumability and atomic appends are the same as on
one machine. Containers start wherever the actor runs: every node needs Docker and the images; or, with
`CollectConfig.docker_hosts`, on actor i's engine `docker_hosts[i % len]`, which needs the images instead.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from forager.agent.config import AgentConfig, CollectConfig
from forager.agent.loop import host_gone, make_pool, make_worker_env, run_episode
from forager.core import ForagerError, Task, Trajectory
from forager.plugins import PLUGINS_ENV
from forager.policies.spec import PolicySpec
from forager.runtime.docker import reaper
from forager.trajectories.store import is_infrastructure_failure


class RolloutWorker:
    """One environment and one policy on some node of the cluster."""

    def __init__(self, policy_spec: dict, agent: dict, config: dict, worker: int | None = None) -> None:
        """`worker`: the actor's number, which picks its Docker host (None: one at random, as an actor's
        process has no turn to take)."""
        self.policy = PolicySpec.model_validate(policy_spec).build()
        self.agent = AgentConfig.model_validate(agent)
        collect_config = CollectConfig.model_validate(config)
        if collect_config.docker_hosts:  # this actor's host only: the one its pool checks and its env uses
            number = random.randrange(len(collect_config.docker_hosts)) if worker is None else worker
            collect_config = collect_config.model_copy(update={"docker_hosts": [collect_config.docker_host(number)]})
        # The actor's own pool (for its one env), closed by close(): `ray.kill` ends the process without
        # atexit, so the process-wide shared pool would leave its idle containers behind.
        self.pool = make_pool(collect_config.model_copy(update={"workers": 1}))
        self.env = make_worker_env(self.agent, collect_config, self.pool, 0)

    def run(self, task: dict | str, sample: int) -> str:
        """One episode of a Task (as a dict) or of a plug-in env's task id."""
        chosen = task if isinstance(task, str) else Task.model_validate(task)
        return run_episode(self.env, self.policy, chosen, self.agent, sample=sample).to_json()

    def close(self) -> None:
        """Remove the episode's container and every idle one of the pool (before the actor is killed)."""
        try:
            self.env.close()
        finally:
            if self.pool is not None:
                self.pool.close()
            reaper.drain()  # removals run in the background: finish them before ray.kill ends this process
            close = getattr(self.policy, "close", None)
            if callable(close):
                close()


def worker_env_vars() -> dict[str, str]:
    """What the actors' processes need from this one's environment: unbuffered output, the plug-in folders."""
    import os

    return {"PYTHONUNBUFFERED": "1", **({PLUGINS_ENV: os.environ[PLUGINS_ENV]} if os.environ.get(PLUGINS_ENV) else {})}


def _wire(task: Task | str) -> dict | str:
    return task.model_dump() if isinstance(task, Task) else task


def run_on_ray(pending: list[tuple[Task, int]] | list[tuple[str, int]], policy_spec: PolicySpec, agent: AgentConfig, config: CollectConfig,
               finished: Callable[[Trajectory], None], stop: threading.Event) -> None:
    """Run the pending (task, sample) pairs on Ray actors; `finished` gets each trajectory on the driver."""
    try:
        import ray
    except ImportError as err:
        raise ForagerError("--ray-address needs Ray: pip install 'forager[train]' (or 'ray[default]')") from err
    if not pending:
        return
    started_here = not ray.is_initialized()
    if started_here:
        address = None if config.ray_address == "local" else config.ray_address
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": worker_env_vars()})
    workers: list = []
    try:
        actor = ray.remote(num_cpus=0.1)(RolloutWorker)
        workers = [actor.remote(policy_spec.model_dump(), agent.model_dump(), config.model_dump(), number)
                   for number in range(min(config.workers, len(pending)))]
        queue = list(reversed(pending))
        running = {}  # future -> worker
        for worker in workers:
            task, sample = queue.pop()
            running[worker.run.remote(_wire(task), sample)] = worker
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            worker = running.pop(ready)
            trajectory = Trajectory.from_json(ray.get(ready))
            finished(trajectory)
            if is_infrastructure_failure(trajectory) and host_gone(config, workers.index(worker)):
                continue  # its engine is gone: the other actors take the rest
            if queue and not stop.is_set():  # on stop: no new episodes, the running ones finish
                task, sample = queue.pop()
                running[worker.run.remote(_wire(task), sample)] = worker
    finally:
        _close_workers(ray, workers)
        if started_here:
            ray.shutdown()


def _close_workers(ray: Any, workers: list) -> None:
    """Close every actor (its containers and warm pool) and only then kill it, also after an error."""
    try:
        ray.get([w.close.remote() for w in workers], timeout=120)
    except Exception:  # noqa: BLE001 - a dead actor has nothing left to close; `forager gc` finds the rest
        pass
    for worker in workers:
        ray.kill(worker)
