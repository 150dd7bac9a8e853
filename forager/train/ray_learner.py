"""The learner's ranks as Ray actors in a placement group: `forager train` with `ray_address` set.

Layout: one placement-group bundle per rank (`learner.ranks`, or one rank per GPU of `learner.num_gpus`), a GPU
and a CPU each, or one CPU on a CPU learner, placed by `learner.placement_strategy` (PACK by default). Each rank is
an actor in its bundle (`forager.train.ray_rank.LearnerRank`) that runs what a torchrun rank runs,
`forager.train.loop.train`, in the environment torchrun would give it: RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, and rank 0's node address and a free port there as MASTER_ADDR and MASTER_PORT; gloo on CPUs,
NCCL on GPUs. The ranks on one node see all of
that node's ranks' GPUs (CUDA_VISIBLE_DEVICES, LOCAL_RANK the position of their own), as Ray Train does, so NCCL
can go peer to peer. Rank 0 leads as under torchrun: rollout, buffer, engine, metrics; its episode slots are
threads in its actor, since the loop's engines are objects in its process.

The driver (`forager train` on the head or through a Ray client) places the ranks, checks that `out_dir` is one
directory for all of them, relays rank 0's progress (`on_start`, `on_step`) and returns its summary. Ctrl-C
stops rank 0 as it stops a torchrun rank (rank 0 tells the others). A rank that dies, its process or its node,
ends the run with which rank on which node died during which step and the checkpoint a rerun resumes from.
Every way out removes the placement group, which kills the actors.

`out_dir` and the model directory must be at the same path on every node (a shared filesystem): each rank writes
its checkpoint shard there and loads the model from there. The ranks' config has `ray_address` cleared: the
address says where a run ran, not what it trains, so a run resumes on another cluster or under torchrun.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forager.core import ForagerError
from forager.train.ray_rank import LearnerRank, RankPlace
from forager.train.sections import LearnerConfig

if TYPE_CHECKING:
    from forager.train.config import TrainConfig
    from forager.train.loop import TrainSummary

__all__ = ["LearnerRank", "RankDiedError", "RankPlace", "RayLearnerGroup", "learner_bundles", "learner_ranks",
           "rank_env", "train_on_ray"]

ACTOR_START_TIMEOUT_S = 300.0
"""How long the ranks' actors may take to start once placed (a worker process, imports, the runtime env)."""
POLL_S = 1.0
"""How long one wait of the driver for rank 0's progress lasts."""
SETTLE_S = 5.0
"""After one rank fails, how long the driver waits for the others' errors: the first may be an echo (a
collective that lost its peer) of the one that matters."""
DIAGNOSE_S = 60.0
"""How long the driver waits to learn which ranks are dead once one failed (Ray marks the actors of a dead node
dead when its health checks fail)."""
STOP_GRACE_S = 60.0
"""After Ctrl-C, how long the ranks get to stop cleanly (rank 0 closes the rollout's containers) before they go."""
CLOSE_GRACE_S = 10.0
"""After a failure, how long the surviving ranks get to unwind before they are killed."""


class RankDiedError(ForagerError):
    """A learner rank's process or node died mid-run; the message says which, when, and how to resume."""


def learner_ranks(learner: LearnerConfig) -> int:
    """The number of ranks: one per GPU, or `learner.ranks` CPU processes (one by default)."""
    if learner.num_gpus:
        if learner.ranks not in (None, learner.num_gpus):
            raise ForagerError(f"learner.ranks ({learner.ranks}) differs from learner.num_gpus ({learner.num_gpus}): "
                               "a GPU learner runs one rank per GPU; leave learner.ranks unset")
        return learner.num_gpus
    return learner.ranks or 1


def learner_bundles(learner: LearnerConfig) -> list[dict[str, float]]:
    """One placement-group bundle per rank: a GPU and a CPU, or a CPU."""
    bundle = {"GPU": 1.0, "CPU": 1.0} if learner.num_gpus else {"CPU": 1.0}
    return [dict(bundle) for _ in range(learner_ranks(learner))]


def rank_env(places: Sequence[RankPlace], gpus: bool) -> list[dict[str, str]]:
    """Each rank's torchrun environment. With GPUs the ranks of a node share CUDA_VISIBLE_DEVICES (all of the
    node's ranks' GPUs) and LOCAL_RANK is the position of the rank's own GPU in it."""
    master = places[0]
    envs = []
    for place in places:
        peers = [p for p in places if p.node_id == place.node_id]
        env = {"RANK": str(place.rank), "WORLD_SIZE": str(len(places)), "LOCAL_RANK": str(peers.index(place)),
               "LOCAL_WORLD_SIZE": str(len(peers)), "MASTER_ADDR": master.node_ip, "MASTER_PORT": str(master.port)}
        if gpus:
            visible = sorted({g for p in peers for g in p.gpu_ids}, key=_gpu_order)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(visible)
            env["LOCAL_RANK"] = str(visible.index(place.gpu_ids[0]))
        envs.append(env)
    return envs


def _gpu_order(gpu: str) -> tuple[bool, int, str]:
    """Indices in numeric order (2 before 10), then any other ids (UUIDs)."""
    return (not gpu.isdigit(), int(gpu) if gpu.isdigit() else 0, gpu)


@dataclass
class _Progress:
    """What the driver knows of the run from rank 0's events, and the callbacks it hands them to."""

    on_step: Callable[[dict[str, Any], TrainSummary], None] | None = None
    on_start: Callable[[TrainSummary], None] | None = None
    acked: int = 0
    step: int | None = None
    """The last step rank 0 finished; None before the loop began (the ranks load the model and the checkpoint)."""
    checkpoint: Path | None = None

    def relay(self, events: list[tuple[Any, ...]]) -> None:
        self.acked += len(events)
        for kind, *rest in events:
            summary: TrainSummary = rest[-2]
            summary.started = time.monotonic() - rest[-1]  # this process's clock, so rates and the ETA hold
            self.step, self.checkpoint = summary.step, summary.last_checkpoint
            if kind == "start" and self.on_start is not None:
                self.on_start(summary)
            elif kind == "step" and self.on_step is not None:
                self.on_step(rest[0], summary)

    def died_message(self, dead: dict[int, str], places: Sequence[RankPlace]) -> str:
        who = ", ".join(f"rank {rank} on node {places[rank].where}" for rank in sorted(dead))
        when = f"during step {self.step + 1}" if self.step is not None else \
            "before its first step (loading the model or the checkpoint)"
        causes = "; ".join(dict.fromkeys(dead.values()))
        kept = f"the run keeps checkpoint {self.checkpoint.name}; run the same command to resume from it" \
            if self.checkpoint is not None else \
            "the run has no checkpoint yet (or one it had not reported); run the same command to start it again"
        return f"learner {who} died {when} ({causes}); {kept}"


class RayLearnerGroup:
    """The ranks of one run on Ray: a placement group, an actor per bundle in one torch.distributed world, and
    their teardown (`close`: idempotent; a context manager too)."""

    def __init__(self, ray: Any, learner: LearnerConfig) -> None:
        self.ray = ray
        self.bundles = learner_bundles(learner)
        self.gpus = learner.num_gpus > 0
        self.strategy, self.timeout = learner.placement_strategy, learner.placement_timeout_s
        self.placement_group: Any = None
        self.actors: list[Any] = []
        self.places: list[RankPlace] = []

    @property
    def world_size(self) -> int:
        return len(self.bundles)

    def __enter__(self) -> RayLearnerGroup:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> RayLearnerGroup:
        """Reserve the bundles (or fail with what the cluster has), start the actors, give each its environment."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from forager.agent.ray_collect import worker_env_vars

        ray = self.ray
        self.placement_group = placement_group(self.bundles, strategy=self.strategy,
                                               name=f"forager-learner-{uuid.uuid4().hex[:8]}")
        if not self.placement_group.wait(timeout_seconds=self.timeout):
            raise ForagerError(self._no_room())
        actor_class = ray.remote(LearnerRank)
        for rank in range(self.world_size):
            strategy = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=rank,
                                                        placement_group_capture_child_tasks=False)
            self.actors.append(actor_class.options(
                num_cpus=self.bundles[rank]["CPU"], num_gpus=self.bundles[rank].get("GPU", 0), max_concurrency=4,
                max_restarts=0, scheduling_strategy=strategy, runtime_env={"env_vars": worker_env_vars()},
            ).remote(rank, self.world_size))
        try:
            self.places = ray.get([actor.place.remote() for actor in self.actors], timeout=ACTOR_START_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - which rank, and why, is in Ray's error
            raise ForagerError(f"the learner's ranks did not start within {ACTOR_START_TIMEOUT_S:.0f} s (is forager "
                               f"installed on every node?): {_first_line(err)}") from err
        ray.get([actor.join.remote(env) for actor, env in zip(self.actors, rank_env(self.places, self.gpus))])
        return self

    def check_shared(self, out_dir: Path) -> None:
        """Every rank must see the files rank 0 writes in `out_dir`: their checkpoint shards and the run meet there."""
        ray, token = self.ray, uuid.uuid4().hex
        ray.get(self.actors[0].mark.remote(str(out_dir), token))
        try:
            seen = ray.get([actor.sees.remote(str(out_dir), token) for actor in self.actors[1:]])
        finally:
            ray.get(self.actors[0].unmark.remote(str(out_dir)))
        blind = [self.places[rank].where for rank, ok in enumerate(seen, start=1) if not ok]
        if blind:
            raise ForagerError(f"out_dir {out_dir} is not shared: the learner ranks on node(s) {', '.join(blind)} "
                               "do not see what rank 0 wrote there. Every rank writes its checkpoint shard in out_dir "
                               "and loads the model from model.path: put both on a filesystem every node mounts at the "
                               "same path (NFS, a cluster filesystem) and give absolute paths")

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """`fn(*args)` on every rank at once, in its torchrun environment; each rank's result, in rank order."""
        return self._wait([actor.call.remote(fn, *args) for actor in self.actors], _Progress())

    def train(self, config: TrainConfig, out_dir: Path, *,
              on_step: Callable[[dict[str, Any], TrainSummary], None] | None = None,
              on_start: Callable[[TrainSummary], None] | None = None) -> TrainSummary:
        """`forager.train.loop.train` on every rank, rank 0's progress relayed; Ctrl-C stops the run cleanly."""
        from forager.train.loop import TrainSummary

        progress = _Progress(on_step, on_start)
        wire = config.model_dump(mode="json")
        refs = [actor.train.remote(wire, str(out_dir)) for actor in self.actors]
        try:
            results = self._wait(refs, progress)
        except KeyboardInterrupt:
            results = self._stop(refs, progress)
        if results[0] is None:  # stopped before the loop began: the run is where it was
            return TrainSummary(out_dir, config.learner.steps, start_step=progress.step or 0,
                                step=progress.step or 0, last_checkpoint=progress.checkpoint, interrupted=True)
        summary, elapsed = results[0]
        summary.started = time.monotonic() - elapsed
        return summary

    def close(self) -> None:
        """Remove the placement group and kill the actors (also those already dead)."""
        ray = self.ray
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self.placement_group)
            self.placement_group = None

    # -- waiting, stopping, failing ------------------------------------------------------------------------
    def _wait(self, refs: list[Any], progress: _Progress) -> list[Any]:
        """Every rank's result, relaying rank 0's events meanwhile; the first failure ends it (see `_failure`)."""
        ray = self.ray
        pending = {ref: rank for rank, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        polling = self.actors[0].progress.remote(progress.acked, POLL_S)
        while pending:
            ready, _ = ray.wait([*pending, polling], num_returns=1, timeout=POLL_S * 5)
            for ref in ready:
                if ref == polling:
                    try:
                        progress.relay(ray.get(ref))
                    except Exception as err:  # noqa: BLE001 - rank 0 is gone or failing: find out which
                        raise self._failure(0, err, pending, progress) from err
                    polling = self.actors[0].progress.remote(progress.acked, POLL_S)
                    continue
                rank = pending.pop(ref)
                try:
                    results[rank] = ray.get(ref)
                except Exception as err:  # noqa: BLE001
                    raise self._failure(rank, err, pending, progress) from err
        with contextlib.suppress(Exception):  # the last steps' lines; the summary has their figures anyway
            progress.relay(ray.get(self.actors[0].progress.remote(progress.acked, 0.0), timeout=POLL_S * 5))
        return results

    def _stop(self, refs: list[Any], progress: _Progress) -> list[Any]:
        """Ctrl-C: interrupt rank 0 (it tells the others at its next batch) and wait for the ranks; a second Ctrl-C
        or the grace period ends the wait (the caller's `close` kills what is left)."""
        ray = self.ray
        results: list[Any] = [None] * len(refs)
        with contextlib.suppress(Exception):
            ray.get(self.actors[0].interrupt.remote(), timeout=POLL_S * 5)
        try:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_S)
        except KeyboardInterrupt:
            done = []
        for ref in done:
            with contextlib.suppress(Exception):  # a rank that left a collective when rank 0 did: rank 0 speaks
                results[refs.index(ref)] = ray.get(ref)
        with contextlib.suppress(Exception):
            progress.relay(ray.get(self.actors[0].progress.remote(progress.acked, 0.0), timeout=POLL_S * 5))
        if results[0] is not None:
            results[0][0].interrupted = True
        return results

    def _failure(self, rank: int, error: BaseException, pending: dict[Any, int], progress: _Progress
                 ) -> BaseException:
        """The error to raise for a failed rank. A rank's own error can be the echo of another's (a collective that
        lost its peer): the dead ranks are reported first, then the first ForagerError, then this one. The
        survivors get a moment to unwind (rank 0 closes its rollout) before `close` kills them."""
        ray = self.ray
        errors = {rank: error}
        others = list(pending)
        settle = 0.0 if _is_death(error) and not _is_unavailable(error) else SETTLE_S  # a death is no echo
        with contextlib.suppress(Exception):
            ready, _ = ray.wait(others, num_returns=len(others), timeout=settle) if others else ([], [])
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as err:  # noqa: BLE001
                    errors[pending[ref]] = err
        alive_or_dead = {r for r, e in errors.items() if not _is_unavailable(e)}  # it raised, or Ray says it died
        dead = {r: _death_cause(e) for r, e in errors.items() if _is_death(e) and r in alive_or_dead}
        dead |= self._dead_ranks(alive_or_dead)
        self._wind_down([ref for ref in others if pending[ref] not in errors])
        if dead:
            return RankDiedError(progress.died_message(dead, self.places))
        for r in sorted(errors):
            cause = getattr(errors[r], "cause", errors[r])  # a RayTaskError carries the rank's exception
            if isinstance(cause, ForagerError):
                return _on_rank(cause, f"learner rank {r} on node {self.places[r].where}: {cause}")
        return error

    def _dead_ranks(self, known: set[int]) -> dict[int, str]:
        """The ranks (other than `known`) that are dead: {rank: why}. An unreachable one is asked again until Ray
        says why it died (a dead node's actors are marked dead when its health checks fail) or `DIAGNOSE_S` passed."""
        ray = self.ray
        pings = {self.actors[r].place.remote(): r for r in range(self.world_size) if r not in known}
        dead: dict[int, str] = {}
        deadline = time.monotonic() + DIAGNOSE_S
        while pings and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pings), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                rank = pings.pop(ref)
                try:
                    ray.get(ref)
                except Exception as err:  # noqa: BLE001
                    if not _is_unavailable(err):
                        dead[rank] = _death_cause(err)
                        continue
                    time.sleep(POLL_S / 2)
                    pings[self.actors[rank].place.remote()] = rank
        dead |= {rank: f"it stopped answering for {DIAGNOSE_S:.0f} s" for rank in pings.values()}
        return dead

    def _wind_down(self, refs: list[Any]) -> None:
        with contextlib.suppress(Exception):
            ray = self.ray
            ray.get(self.actors[0].interrupt.remote(), timeout=CLOSE_GRACE_S)
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=CLOSE_GRACE_S)

    def _no_room(self) -> str:
        bundle = "{" + ", ".join(f"{key}: {value:g}" for key, value in self.bundles[0].items()) + "}"
        return (f"the Ray cluster has no room for the learner after {self.timeout:g} s: asked for {self.world_size} "
                f"rank(s), each a bundle of {bundle}, placed {self.strategy}; the cluster has "
                f"{_cluster_view(self.ray)}. "
                "Add nodes (or GPUs), lower learner.ranks or learner.num_gpus, choose another "
                "learner.placement_strategy (STRICT_SPREAD needs a node per rank), or wait longer "
                "(learner.placement_timeout_s)")


def _on_rank(error: ForagerError, message: str) -> ForagerError:
    """The rank's error, of its own type (ConfigError, LearnerError, ...), saying which rank raised it."""
    try:
        return type(error)(message)
    except TypeError:  # a subclass that takes other arguments
        return ForagerError(message)


def _is_death(error: BaseException) -> bool:
    from ray.exceptions import RayActorError

    return isinstance(error, RayActorError)


def _is_unavailable(error: BaseException) -> bool:
    """Ray cannot reach the actor now: it may be dead (its node is) or come back."""
    from ray.exceptions import ActorUnavailableError

    return isinstance(error, ActorUnavailableError)


def _death_cause(error: BaseException) -> str:
    """Ray's reason for an actor's death in a line ('its node died', 'its worker process died', ...)."""
    from ray.exceptions import RayActorError

    if not isinstance(error, RayActorError):
        return _first_line(error)
    lines = [line.strip() for line in str(error).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(("The actor died unexpectedly", "class_name:",
                                                                       "actor_id:", "pid:", "name:", "namespace:",
                                                                       "ip:"))]
    reason = reasons[0] if reasons else lines[0] if lines else type(error).__name__
    return re.sub(r"\b([0-9a-f]{8})[0-9a-f]{24,}\b", r"\1", reason)[:200]  # node ids as `where` shows them


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _cluster_view(ray: Any) -> str:
    """The alive nodes with their free and total CPUs and GPUs."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    try:
        from ray._private.state import available_resources_per_node  # no public per-node view without the dashboard

        free = available_resources_per_node()
    except Exception:  # noqa: BLE001
        free = {}
    shown = []
    for node in nodes:
        total, available = node.get("Resources", {}), free.get(node["NodeID"], {})
        amounts = [f"{key} {available.get(key, 0):g}/{total[key]:g} free" for key in ("CPU", "GPU") if key in total]
        shown.append(f"{node['NodeManagerAddress']} ({node['NodeID'][:8]}): {', '.join(amounts) or 'no CPU or GPU'}")
    return f"{len(nodes)} alive node(s): " + "; ".join(shown)


def connect(address: str) -> tuple[Any, bool]:
    """Ray, connected to the cluster at `address` (`local`: a cluster on this machine) unless it already is; and
    whether this call connected (the caller shuts it down)."""
    try:
        import ray
    except ImportError as err:
        raise ForagerError("ray_address needs Ray: pip install 'forager[train]'") from err
    if ray.is_initialized():
        return ray, False
    from forager.agent.ray_collect import worker_env_vars

    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": worker_env_vars()})
    except ConnectionError as err:
        raise ForagerError(f"cannot reach the Ray cluster at {address}: {err}; start one (`ray start --head`) or "
                           "fix ray_address") from err
    return ray, True


def train_on_ray(config: TrainConfig, out_dir: str | Path | None = None, *,
                 on_step: Callable[[dict[str, Any], TrainSummary], None] | None = None,
                 on_start: Callable[[TrainSummary], None] | None = None) -> TrainSummary:
    """`forager.train.loop.train` with the learner's ranks on the Ray cluster at `config.ray_address` (see the
    module's docstring); the same callbacks and summary, and the same command resumes."""
    from forager.train.loop import _stop_on_sigterm

    if not config.ray_address:
        raise ForagerError("train_on_ray needs ray_address (auto, ray://HOST:PORT, HOST:PORT or local)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ForagerError("ray_address under torchrun: launch the ranks one way, torchrun or Ray (drop ray_address "
                           "or run `forager train` once, without torchrun)")
    learner_ranks(config.learner)  # a bad rank count fails before the cluster is touched
    out = Path(out_dir or config.out_dir).expanduser().absolute()
    ranks_config = config.model_copy(update={"out_dir": str(out), "ray_address": None})
    ray, connected = connect(config.ray_address)
    group = RayLearnerGroup(ray, config.learner)
    try:
        with _stop_on_sigterm():
            group.start()
            if group.world_size > 1:
                group.check_shared(out)
            return group.train(ranks_config, out, on_step=on_step, on_start=on_start)
    finally:
        group.close()
        if connected:
            ray.shutdown()
