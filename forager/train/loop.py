"""The training loop: rollout -> buffer -> learner -> weight sync -> metrics -> checkpoint, resumable.

Orchestration only; every stage is its own module. `train(config, out_dir)` builds the learner (this process,
or one rank of many under torchrun: `forager.train.ranks`, rank 0 leading), the engine (`rollout.backend`:
`hf` in this process, fed tensors directly; `remote`, a sampler process fed by `sync.WeightBroadcaster`;
`vllm`, servers updated through their worker extension: `engines.vllm`), the buffer and the rollout workers, then takes batches until
`learner.steps` steps are done. A step whose batch carries no signal is still a step (the learner skips
the update; `learner/skipped` says so).

The run directory holds `config.yaml` (the resolved config; a different config there is refused),
`trajectories.jsonl`, `metrics.jsonl`, `tensorboard/`, `checkpoints/`, `curves.svg` (drawn at every checkpoint)
and, at the end, `hf/` (the final weights in the transformers layout). A checkpoint's data cursor is the
loop's step, the task cursor's state, the ids trained on and the buffer's counters. The groups waiting in
the buffer at a checkpoint are handed to the cursor as open groups, so a resumed run trains them (their
members are read back from the store, never sampled twice). Resuming restores the policy version with the
weights, so the staleness bound is measured against the same versions as before the kill.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forager.core import ForagerError, Task
from forager.registration import SWE_ENV_ID
from forager.train.buffer import RolloutBuffer
from forager.train.config import TrainConfig, load_train_config
from forager.train.demo import DEMO_MODEL, DEMO_TASKS, build_demo_model, demo_tasks
from forager.train.rollout import RolloutWorkers, agent_config, collect_config

CONFIG_FILE = "config.yaml"
TAKE_TIMEOUT_S = 1.0
"""How long one wait for a batch lasts before the loop looks at its stop flag and the workers' health."""
STOP_WAIT_S = 5.0
"""Seconds running episodes get to end on a stop; open groups run again on resume."""


@dataclass
class TrainSummary:
    """What a run (or its resumed part) did; `on_step` gets it after every step."""

    out_dir: Path
    total_steps: int
    start_step: int = 0
    """The step the run resumed from (0: a fresh run)."""
    step: int = 0
    policy_version: int = 0
    resumed_from: Path | None = None
    samples: int = 0
    episodes: int = 0
    dropped_stale: int = 0
    staleness_max: int = 0
    rewards: list[float] = field(default_factory=list)
    """The reward mean of each step of this part of the run."""
    resolved_share: float = 0.0
    last_checkpoint: Path | None = None
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        done = self.step - self.start_step
        return self.elapsed / done * (self.total_steps - self.step) if done else None


@dataclass
class _Run:
    """The parts of a run, built once; the loop's state that a checkpoint keeps. Only rank 0 (the leader) has an
    engine, a buffer, the rollout and the metrics; the other ranks have the learner's shard."""

    config: TrainConfig
    learner: Any
    engine: Any
    buffer: RolloutBuffer | None
    rollout: RolloutWorkers | None
    metrics: Any
    trained: set[str]
    summary: TrainSummary
    model_path: str

    @property
    def leader(self) -> bool:
        return self.learner.rank == 0


def train(config: TrainConfig, out_dir: str | Path | None = None, *,
          on_step: Callable[[dict[str, Any], TrainSummary], None] | None = None,
          on_start: Callable[[TrainSummary], None] | None = None, engine: Any = None) -> TrainSummary:
    """Train until `config.learner.steps` steps (resuming from the newest checkpoint in `out_dir`); Ctrl-C or
    SIGTERM stops cleanly (`summary.interrupted`), and the same call resumes.

    `engine`: an `Engine` object to sample with instead of the one `rollout.backend` names (the caller closes it)."""
    from forager.train import ranks

    out = Path(out_dir or config.out_dir)
    config = config.model_copy(update={"out_dir": str(out)})
    with _stop_on_sigterm(), contextlib.ExitStack() as stack:
        if ranks.init_process_group():
            import torch.distributed as dist

            stack.callback(dist.destroy_process_group)
        if ranks.rank_and_world()[0] == 0:
            write_config(config, out)
        run = _build(config, out, stack, engine)
        if on_start is not None and run.leader:
            on_start(run.summary)
        try:
            _loop(run, on_step)
        except KeyboardInterrupt:
            run.summary.interrupted = True
    return run.summary


def write_config(config: TrainConfig, out: Path) -> None:
    """Write `config.yaml`, or check that the one there is this config (a resumed run trains what it started)."""
    from forager.files import atomic_write_text

    path = out / CONFIG_FILE
    if path.exists():
        saved = load_train_config(path)
        if saved != config:
            changed = [key for key, value in _flat(config.model_dump()).items()
                       if _flat(saved.model_dump()).get(key) != value]
            raise ForagerError(f"{out} holds a run with another config ({', '.join(changed[:5])} differ): run with "
                               f"the config in {path}, or give a new --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, config.to_yaml())


def load_tasks_for(config: TrainConfig) -> tuple[list[Task] | list[str], str]:
    """The run's tasks (env.tasks, or the sample tasks; a plug-in env's task ids) and the runtime to run them on."""
    env = config.env
    if env.id != SWE_ENV_ID:
        from forager.agent.text_envs import swe_env_class, text_env_tasks

        env_class = swe_env_class(env.id)
        if env_class is None:
            return text_env_tasks(env.id, env.limit), env.runtime
        tasks, runtime = load_tasks_for(config.model_copy(update={"env": env.model_copy(update={"id": SWE_ENV_ID})}))
        return env_class.prepare_tasks([t for t in tasks if isinstance(t, Task)], runtime), runtime
    if env.tasks == DEMO_TASKS:
        if env.runtime == "docker":
            raise ForagerError("env.tasks demo runs on the local runtime (its repository is on this machine); set "
                               "env.runtime=local")
        return demo_tasks(), "local"
    if env.tasks is None:
        from forager.images.sample import sample_tasks_for_runtime

        tasks, runtime = sample_tasks_for_runtime(env.runtime)
    else:
        from forager.tasks.store import load_tasks

        try:
            tasks = load_tasks(env.tasks, split=env.split, format=env.format)
        except (ValueError, FileNotFoundError) as err:
            raise ForagerError(f"env.tasks: {err}") from err
        runtime = env.runtime
    tasks = tasks[:env.limit] if env.limit else tasks
    if not tasks:
        raise ForagerError(f"no tasks to train on in {env.tasks or 'the sample tasks'}")
    return tasks, runtime


def _build(config: TrainConfig, out: Path, stack: contextlib.ExitStack, engine: Any) -> _Run:
    """The learner (restored from the newest checkpoint); on the leader also the engine, buffer, metrics writer
    and rollout."""
    from forager.train import checkpoint, ranks
    from forager.train.learner import Learner
    from forager.train.metrics import MetricsWriter

    rank, world_size = ranks.rank_and_world()
    # The leader finds (or builds) the model and loads the tasks; the other ranks take its path.
    tasks, runtime = load_tasks_for(config) if rank == 0 else ([], "")
    model = ranks.broadcast(_model_path(config) if rank == 0 else None, world_size)
    learner = Learner.from_config(config, model_path=model)
    summary = TrainSummary(out, config.learner.steps)
    cursor: dict[str, Any] = {}
    newest = checkpoint.latest(out) if config.checkpoint.resume else None
    if newest is not None:
        restored = checkpoint.load(learner, newest)
        cursor = restored.data_cursor
        summary.resumed_from, summary.start_step = newest, int(cursor.get("step", restored.step))
        summary.step, summary.last_checkpoint = summary.start_step, newest
    summary.policy_version = learner.policy_version
    if rank != 0:
        if newest is not None:
            _sync(learner, None)  # the full weights are gathered from every rank's shard
        return _Run(config, learner, None, None, None, None, set(), summary, model)
    if engine is None:
        engine = _engine(config, model, learner.policy_version)
        stack.callback(engine.close)
    if newest is not None:
        _sync(learner, engine)  # the engine samples with the restored weights, named with the restored version
    buffer = RolloutBuffer.from_config(config)
    buffer.totals.update(Counter(cursor.get("buffer", {})))
    # Steps after the checkpoint (all of them without one) were lost with the weights: their lines go.
    metrics = stack.enter_context(MetricsWriter(out, resume_step=summary.start_step))
    rollout = RolloutWorkers(
        tasks, buffer, out, engine=engine, agent=agent_config(config),
        collect=collect_config(config).model_copy(update={"runtime": runtime}),
        concurrency=config.rollout.concurrency, seed=config.seed,
        cursor_state=cursor.get("rollout") or _fresh_cursor(config, len(tasks), out))
    rollout.start()
    stack.callback(rollout.stop, STOP_WAIT_S)
    return _Run(config, learner, engine, buffer, rollout, metrics, set(cursor.get("trained", [])), summary,
                model)


def _model_path(config: TrainConfig) -> str:
    """What `model.path` names, as a directory or hub id (the demo's model and known names built on first use)."""
    from forager.policies.models import resolve_model

    if config.model.path == DEMO_MODEL:
        return str(build_demo_model(agent_config(config)))
    return resolve_model(config.model.path)


def _engine(config: TrainConfig, model: str, version: int) -> Any:
    """The sampling engine: `hf` in this process, `remote` (a sampler process fed by broadcast), or `vllm` (servers
    sampled token-in-token-out and updated in flight)."""
    from forager.train.engines import make_engine

    options = {"temperature": config.rollout.temperature, "top_p": config.rollout.top_p, "seed": config.seed,
               "max_tokens": config.env.max_tokens_per_turn, "policy_version": version}
    if config.rollout.backend != "vllm":
        return make_engine(config.rollout.backend, model, max_context=config.env.max_context_tokens, **options)
    rollout, sync = config.rollout, config.sync
    return make_engine("vllm", model, base_urls=rollout.servers, engines=rollout.engines,
                       tensor_parallel=rollout.tensor_parallel, gpu_memory_utilization=rollout.gpu_memory_utilization,
                       max_context=config.env.max_context_tokens, sync=sync.method, sync_host=sync.host,
                       sync_dir=sync.dir, bucket_bytes=sync.bucket_mb * 2**20, server_command=rollout.server_command,
                       server_args=rollout.server_args, gpus=rollout.gpus, **options)


def _sync(learner: Any, engine: Any) -> None:
    """Hand the learner's full weights to the engine under the learner's policy version. Every rank calls it (the
    full tensors are gathered from the shards); only the leader has an engine to hand them to."""
    pairs = (pair for bucket in learner.state_dict_for_sync() for pair in bucket)
    if engine is None:
        for _ in pairs:
            pass
        return
    engine.update_weights(pairs, learner.policy_version)


def _loop(run: _Run, on_step: Callable[[dict[str, Any], TrainSummary], None] | None) -> None:
    """Take a batch, step, sync, log, checkpoint; until the last step or a stop."""
    from forager.train.metrics import PhaseTimer

    from forager.train import ranks

    config, summary, timer = run.config, run.summary, PhaseTimer()
    interval = config.checkpoint.interval
    world_size = run.learner.world_size
    while summary.step < summary.total_steps:
        timer.reset()
        with timer("rollout"):
            batch, samples = _next_samples(run)
        with timer("learner"):
            learned = run.learner.step(ranks.share(samples, run.learner.rank, world_size))
        if not learned.get("learner/skipped"):  # a skipped step changed no weight: nothing to send
            with timer("sync"):
                _sync(run.learner, run.engine)
        run.trained.update(s.trajectory_id for s in samples)
        summary.step += 1
        last = summary.step == summary.total_steps
        if not run.leader:
            if (interval and summary.step % interval == 0) or last:
                _checkpoint(run)
            continue
        line = _record(run, batch, learned, timer.metrics())
        if (interval and summary.step % interval == 0) or last:
            _checkpoint(run)
        if not last:
            run.buffer.resume()  # synchronous mode: the next groups sample with the new weights
        if on_step is not None:
            on_step(line, summary)


def _next_samples(run: _Run) -> tuple[Any, list[Any]]:
    """(batch, samples not trained on yet): the leader's next batch, its samples sent to every rank (the other
    ranks get no batch). A stop while the leader waits reaches every rank as KeyboardInterrupt."""
    from forager.train import ranks

    world_size = run.learner.world_size
    if not run.leader:
        samples = ranks.broadcast(None, world_size)
        if samples == ranks.STOP:
            raise KeyboardInterrupt
        return None, samples
    try:
        batch = _next_batch(run)
    except KeyboardInterrupt:
        ranks.broadcast(ranks.STOP, world_size)
        raise
    return batch, ranks.broadcast([s for s in batch.samples if s.trajectory_id not in run.trained], world_size)


def _next_batch(run: _Run) -> Any:
    """The next batch at the learner's version; raises when the rollout failed."""
    while True:
        run.rollout.check()
        batch = run.buffer.take_batch(run.learner.policy_version, timeout=TAKE_TIMEOUT_S, partial=False)
        if batch is not None and batch.samples:
            return batch
        if batch is not None:
            run.buffer.resume()  # every group in it was masked: nothing to learn, sample again


def _record(run: _Run, batch: Any, learned: dict[str, float], times: dict[str, float]) -> dict[str, Any]:
    """Write the step's metrics line and fold it into the summary."""
    from forager.train.metrics import step_metrics

    summary = run.summary
    line = step_metrics(summary.step, run.learner.policy_version, batch.stats, learned, times)
    run.metrics.write(line)
    summary.policy_version = run.learner.policy_version
    summary.samples += batch.stats.samples
    summary.episodes += batch.stats.episodes
    summary.dropped_stale += batch.stats.dropped["stale"]
    summary.staleness_max = max(summary.staleness_max, line["staleness_max"])
    summary.rewards.append(batch.stats.reward_mean)
    summary.resolved_share = line["rollout/resolved_share"]
    return line


def _checkpoint(run: _Run) -> None:
    from forager.train import checkpoint

    cursor = None if not run.leader else {  # the leader's manifest holds the cursor
        "step": run.summary.step, "rollout": _cursor_state(run), "trained": sorted(run.trained),
        "buffer": dict(run.buffer.totals)}
    run.summary.last_checkpoint = checkpoint.save(run.learner, run.summary.out_dir, data_cursor=cursor,
                                                  keep_last=run.config.checkpoint.keep_last, step=run.summary.step)
    if run.summary.step == run.summary.total_steps and run.config.checkpoint.save_hf:
        checkpoint.save_hf(run.learner, run.summary.out_dir, run.model_path)
    if run.leader:
        from forager.train.curves import write_curves
        from forager.train.metrics import read_metrics

        write_curves(run.summary.out_dir, read_metrics(run.summary.out_dir))


def _cursor_state(run: _Run) -> dict[str, Any]:
    """The task cursor's state with the groups waiting in the buffer turned back into open groups.

    Taken cursor first, buffer second: a group that ends in between is in both, and counted once."""
    state = run.rollout.state()
    waiting = [g for g in run.buffer.waiting_groups() if g.index not in state["open_groups"]]
    if waiting:
        state["open_groups"] = sorted([*state["open_groups"], *(g.index for g in waiting)])
        state["groups_finished"] -= len(waiting)
        done = {t.trajectory_id for g in waiting for t in g.trajectories}
        state["trajectories_done"] = sorted(set(state["trajectories_done"]) | done)
        state["store_offset"] = 0  # their members lie anywhere in the store: the resumed cursor reads it whole
    return state


def _fresh_cursor(config: TrainConfig, tasks: int, out: Path) -> dict[str, Any] | None:
    """A cursor at the start that reads the whole store, for a run killed before its first checkpoint: the
    episodes it finished are taken from the store, not sampled again under the same ids."""
    from forager.trajectories.store import TRAJECTORIES

    if not (out / TRAJECTORIES).exists():
        return None
    return {"seed": config.seed, "tasks": tasks, "group_size": config.rollout.group_size, "groups_started": 0,
            "groups_finished": 0, "open_groups": [], "trajectories_done": [], "store_offset": 0}


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (the rollout stops, containers go); only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
