"""The trainer's rollout side: groups through the agent loop into the store and the buffer, staleness, the
synchronous gate, back-pressure, metrics, and stopping without leftovers.

Episodes are real: the sample tasks on the local runtime (a scratch clone and a bash per episode, graded by
running the tests). The policy is the scripted engine (the reference fix in toy tokens, with a version
counter), or the real in-process `HFEngine` over the tiny model, and the learner is the real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from forager.agent.config import AgentConfig, CollectConfig
from forager.core import ForagerError, Trajectory
from forager.images.sample import sample_tasks
from forager.policies.spec import PolicySpec
from forager.testing.scripted_engine import ScriptedEngine
from forager.train.buffer import RolloutBuffer
from forager.train.metrics import MetricsWriter, PhaseTimer, read_metrics, step_metrics
from forager.train.rollout import RolloutWorkers
from forager.train.sections import AlgorithmConfig
from forager.trajectories.store import read_trajectories
from tests.conftest import SAMPLE_IMAGE, needs_docker

LOCAL = CollectConfig(runtime="local", reward={"unresolved": -1.0})
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local runtime's scratch clones go here, so a test sees any that is left behind."""
    directory = tmp_path / "scratch"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def workers(run_dir: Path, buffer: RolloutBuffer, engine, *, tasks: int = 1, concurrency: int = 2,
            **options) -> RolloutWorkers:
    return RolloutWorkers(sample_tasks(None)[:tasks], buffer, run_dir, engine=engine, collect=LOCAL,
                          concurrency=concurrency, **options)


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def versions(trajectory: Trajectory) -> list[int]:
    return [m.policy_version for m in trajectory.messages if m.role == "assistant"]


def rollout_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("forager-rollout")]


def scratch_clones(directory: Path) -> list[Path]:
    return sorted(directory.glob("forager-local-*"))


def turns(messages) -> int:
    return sum(m["role"] == "assistant" for m in messages)


# -- (a) groups, the store, resuming ------------------------------------------------------------------

def test_g_episodes_of_a_task_form_a_group_saved_in_the_store(tmp_path: Path) -> None:
    buffer = RolloutBuffer(group_size=3, tokens_per_batch=1, max_staleness=4, max_buffered_groups=1)
    with workers(tmp_path / "run", buffer, ScriptedEngine(fail_every=3), concurrency=3) as rollout:
        batch = buffer.take_batch(0, timeout=120)
    assert batch is not None and len(batch.groups) == 1 and not rollout_threads()
    group = batch.groups[0]
    task = group.task_id
    assert [t.task_id for t in group.trajectories] == [task] * 3 and group.infra_failures == 0
    assert sorted(t.trajectory_id for t in group.trajectories) == [f"{task}#0", f"{task}#1", f"{task}#2"]
    assert sorted(t.reward for t in group.trajectories) == [-1.0, 1.0, 1.0]
    # Mean baseline (1/3), no std: +2/3 for the resolved, -4/3 for the other.
    assert sorted(s.advantage for s in batch.samples) == pytest.approx([-4 / 3, 2 / 3, 2 / 3])
    stats = batch.stats
    assert stats.samples == 3 and stats.tokens == sum(len(s.token_ids) for s in batch.samples)
    assert stats.reward_mean == pytest.approx(1 / 3) and stats.staleness == {0: 3}
    stored = {t.trajectory_id: t for t in read_trajectories([tmp_path / "run"])}
    assert {t.trajectory_id for t in group.trajectories} <= set(stored)
    assert len(stored) == len(read_trajectories([tmp_path / "run"]))  # no id twice
    assert all(t.trainable and t.metadata["group"] >= 0 for t in stored.values())
    assert rollout.state()["groups_finished"] >= 1


def test_a_resumed_cursor_runs_open_groups_again_reusing_what_the_store_holds(tmp_path: Path) -> None:
    stopping = threading.Event()

    def slow_fix(engine: ScriptedEngine, messages) -> None:
        if turns(messages):  # only the fixing episode has later turns: held until its env is closed under it
            stopping.wait(120)
            time.sleep(0.5)

    run = tmp_path / "run"
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=4, max_buffered_groups=1)
    first = workers(run, buffer, ScriptedEngine(before_act=slow_fix), concurrency=2).start()
    wait_until(lambda: (run / "trajectories.jsonl").exists() and (run / "trajectories.jsonl").stat().st_size > 0)
    stopping.set()
    first.stop(wait_s=0)  # the fixing episode is closed under it: an infrastructure failure, not a result
    state = first.state()
    assert state["open_groups"] == [0] and len(state["trajectories_done"]) == 1 and buffer.in_flight == 0, state
    done_before = read_trajectories([run])
    assert [t.trajectory_id for t in done_before] == state["trajectories_done"]
    assert len(read_trajectories([run / "infra_failures"])) == 1

    engine = ScriptedEngine()
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=4, max_buffered_groups=1)
    with workers(run, buffer, engine, concurrency=1, cursor_state=state):
        batch = buffer.take_batch(0, timeout=120)
    assert batch is not None and batch.groups[0].index == 0
    members = {t.trajectory_id: t for t in batch.groups[0].trajectories}
    assert len(members) == 2 and members[done_before[0].trajectory_id] == done_before[0]  # read back, not resampled
    ids = [t.trajectory_id for t in read_trajectories([run])]
    assert len(ids) == len(set(ids)) and set(state["trajectories_done"]) < set(ids)


# -- (b) staleness ------------------------------------------------------------------------------------

def test_stale_trajectories_are_dropped_and_counted_and_mid_episode_updates_show_per_turn(tmp_path: Path) -> None:
    def update_mid_episode(engine: ScriptedEngine, messages) -> None:
        if engine.version == 0 and turns(messages) == 2:
            engine.update_weights(None, 1)

    engine = ScriptedEngine(before_act=update_mid_episode)
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=1, max_buffered_groups=1)
    with workers(tmp_path / "run", buffer, engine, concurrency=1):
        wait_until(lambda: buffer.waiting == 1)  # group 0: the fix (versions 0,0,1,1,1), the quick submit (1)
        engine.update_weights(None, 2)
        batch = buffer.take_batch(2, timeout=120)
        assert batch is not None and [g.index for g in batch.groups] == [1]
        assert dict(batch.stats.dropped) == {"stale": 1, "group_too_small": 1}
        assert batch.stats.staleness == {0: 2} and batch.stats.metrics()["rollout/dropped_stale"] == 1

        wait_until(lambda: buffer.waiting == 1)  # group 2, sampled at version 2
        engine.update_weights(None, 3)
        engine.update_weights(None, 4)  # two updates while it waits: 2 < 4 - 1
        batch = buffer.take_batch(4, timeout=120)
        assert batch is not None and [g.index for g in batch.groups] == [3]
        assert dict(batch.stats.dropped) == {"stale": 2} and batch.stats.staleness == {0: 2}
    assert buffer.totals["dropped/stale"] == 3 and buffer.totals["dropped/group_too_small"] == 1
    stored = {t.trajectory_id: t for t in read_trajectories([tmp_path / "run"])}
    first = next(t for t in stored.values() if t.metadata["group"] == 0 and t.resolved)
    assert versions(first) == [0, 0, 1, 1, 1]  # the update reached the episode between two of its turns


def test_the_loop_waits_for_a_whole_token_budget_batch(tmp_path: Path) -> None:
    """`partial=False` (the loop's call): a timeout before the budget (or a full buffer) returns nothing; the
    default returns what is there."""
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=10**6, max_staleness=4, max_buffered_groups=3)
    with workers(tmp_path / "run", buffer, ScriptedEngine(), concurrency=1):  # one episode at a time
        wait_until(lambda: buffer.waiting == 1)  # two more groups (four episodes, each reset) fill the buffer
        assert buffer.take_batch(0, timeout=0.05, partial=False) is None
        assert buffer.waiting >= 1
        some = buffer.take_batch(0, timeout=0.05)
        assert some is not None and 1 <= len(some.groups) < 3
        wait_until(lambda: buffer.waiting == 3)
        whole = buffer.take_batch(0, timeout=0.05, partial=False)
        assert whole is not None and len(whole.groups) == 3


# -- (c) synchronous mode -----------------------------------------------------------------------------

def test_synchronous_mode_closes_the_gate_so_nothing_is_ever_stale(tmp_path: Path) -> None:
    gate_at_start: list[bool] = []
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=0, max_buffered_groups=8)

    def note_gate(engine: ScriptedEngine, messages) -> None:
        if turns(messages) == 0:
            gate_at_start.append(buffer.gate.is_open)

    engine = ScriptedEngine(before_act=note_gate)
    taken = []
    with workers(tmp_path / "run", buffer, engine, tasks=2, concurrency=4):
        for version in range(2):
            batch = buffer.take_batch(version, timeout=120)
            assert batch is not None and not buffer.gate.is_open and buffer.in_flight == 0
            calls, started = engine.calls, buffer.totals["groups_started"]
            time.sleep(1.0)  # the learner steps: nothing samples meanwhile
            assert (engine.calls, buffer.totals["groups_started"]) == (calls, started)
            engine.update_weights(None, version + 1)  # the weights sync
            buffer.resume()
            taken.append(batch)
    assert gate_at_start and all(gate_at_start)
    assert all(set(b.stats.staleness) == {0} for b in taken) and not buffer.totals["dropped/stale"]
    # Every group in flight when the batch filled was waited for and taken: more than one group per batch.
    assert all(s.policy_version == b.policy_version for b in taken for s in b.samples)
    assert sum(len(b.groups) for b in taken) >= 3
    for trajectory in read_trajectories([tmp_path / "run"]):
        assert len(set(versions(trajectory))) == 1  # no episode ran under two versions


# -- (d) back-pressure ----------------------------------------------------------------------------------

def test_no_group_starts_while_the_buffer_is_full(tmp_path: Path) -> None:
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=10**9, max_staleness=8, max_buffered_groups=2)
    engine = ScriptedEngine()
    highest = 0
    with workers(tmp_path / "run", buffer, engine, tasks=2, concurrency=4):
        deadline = time.monotonic() + 120
        while buffer.waiting < 2:
            counts = buffer.counts()  # one look under the buffer's lock
            highest = max(highest, counts["waiting"] + counts["in_flight"])
            assert time.monotonic() < deadline
            time.sleep(0.02)
        calls = engine.calls
        time.sleep(1.5)
        assert engine.calls == calls and buffer.totals["groups_started"] == 2 and buffer.in_flight == 0
        batch = buffer.take_batch(0, timeout=0)  # full: the learner takes both groups and makes room
        assert batch is not None and len(batch.groups) == 2
        wait_until(lambda: engine.calls > calls)
    assert highest <= 2


# -- (e) metrics ------------------------------------------------------------------------------------------

def test_metrics_lines_and_tensorboard_events_of_a_real_learner_step(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the learner needs torch (pip install -e '.[train]')")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from forager.testing.tiny_model import build_tiny_model
    from forager.train.learner import Learner
    from forager.train.sections import FSDPConfig, LearnerConfig

    run = tmp_path / "run"
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=2, max_buffered_groups=1)
    timer = PhaseTimer()
    with workers(run, buffer, ScriptedEngine(), concurrency=2):
        with timer("rollout"):
            batch = buffer.take_batch(0, timeout=120)
    assert batch is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learner = Learner(build_tiny_model(), LearnerConfig(
            lr=1e-3, steps=4, microbatch_tokens=16384, fsdp=FSDPConfig(param_dtype="float32",
                                                                         activation_checkpointing=False)))
        with timer("learner"):
            learned = learner.step(batch.samples)
    finally:
        torch.set_num_threads(threads)
    with MetricsWriter(run) as writer:
        writer.write(step_metrics(1, learner.policy_version, batch.stats, learned, timer.metrics()))
    (line,) = read_metrics(run)
    assert {"step", "policy_version", "reward_mean", "samples", "dropped_stale", "staleness_max"} <= set(line)
    assert (line["step"], line["policy_version"], line["samples"], line["reward_mean"]) == (1, 1, 2, 0.0)
    for key in ("rollout/reward_std", "rollout/resolved_share", "rollout/turns_mean", "rollout/tokens",
                "rollout/termination/submitted", "rollout/staleness/0", "rollout/dropped",
                "rollout/skipped_zero_advantage_groups", "policy/clip_frac", "policy/approx_kl", "policy/entropy",
                "optim/grad_norm", "optim/lr", "loss/policy", "perf/tokens", "time/rollout_s", "time/learner_s",
                "time/sync_s"):
        assert key in line, key
    assert line["time/learner_s"] > 0 and line["time/rollout_s"] > 0 and line["time/sync_s"] == 0
    assert len(read_trajectories([run])) >= 2  # the store still reads with metrics.jsonl beside it
    viewed = subprocess.run([sys.executable, "-m", "forager", "view", str(run), "--out", str(tmp_path / "v.html")],
                            capture_output=True, text=True, timeout=120)
    assert viewed.returncode == 0 and (tmp_path / "v.html").stat().st_size > 0, viewed.stdout + viewed.stderr

    events = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0,
                                                                                          "histograms": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"reward_mean", "rollout/reward_mean", "loss/policy", "policy/clip_frac", "time/learner_s"} <= scalars
    (reward,) = events.Scalars("rollout/reward_std")
    assert reward.step == 1 and reward.value == pytest.approx(line["rollout/reward_std"])
    assert "rollout/staleness" in events.Tags()["histograms"]
    assert events.Histograms("rollout/staleness")[0].histogram_value.num == 2


def test_metrics_file_is_repaired_and_cut_back_on_resume(tmp_path: Path) -> None:
    from forager.train.buffer import BatchStats

    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step in range(3):
            writer.write(step_metrics(step, step, BatchStats()))
        with pytest.raises(ForagerError, match="needs step"):
            writer.write({"reward_mean": 1.0})
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "policy_ver')  # killed mid-line
    with MetricsWriter(tmp_path, resume_step=1, tensorboard=False) as writer:
        assert writer.repaired_bytes > 0
        writer.write(step_metrics(2, 2, BatchStats(), {"optim/grad_norm": float("nan")}))
    lines = read_metrics(tmp_path)
    assert [line["step"] for line in lines] == [0, 1, 2] and lines[-1]["optim/grad_norm"] is None


# -- (f) stopping -----------------------------------------------------------------------------------------

def test_stop_ends_running_episodes_and_leaves_no_thread_or_scratch_clone(tmp_path: Path, scratch: Path) -> None:
    engine = ScriptedEngine(delay_s=0.5)
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=2, max_buffered_groups=4)
    rollout = workers(tmp_path / "run", buffer, engine, tasks=2, concurrency=2).start()
    wait_until(lambda: engine.calls >= 2 and scratch_clones(scratch))
    rollout.stop(wait_s=0.2)
    assert not rollout_threads() and not rollout.running
    assert scratch_clones(scratch) == [] and buffer.in_flight == 0
    rollout.check()  # stopping is not a failure


def signalled_rollout(tmp_path: Path, runtime: str, tasks: str, env: dict[str, str]) -> subprocess.Popen:
    """A training rollout in a child process, the learner's side waiting for batches, as `forager train` will."""
    script = textwrap.dedent(f"""
        from forager.agent.config import CollectConfig
        from forager.images.sample import sample_tasks
        from forager.testing.scripted_engine import ScriptedEngine
        from forager.train.buffer import RolloutBuffer
        from forager.train.rollout import RolloutWorkers

        buffer = RolloutBuffer(group_size=2, tokens_per_batch=10**9, max_staleness=2)
        with RolloutWorkers({tasks}, buffer, {str(tmp_path / 'run')!r}, engine=ScriptedEngine(delay_s=0.3),
                            collect=CollectConfig(runtime={runtime!r}, warm_pool=2), concurrency=2):
            while True:
                buffer.take_batch(0, timeout=1)
    """)
    # A shell's background job (`pytest ... &`) ignores SIGINT, and a child inherits that: restore the default,
    # so that Python turns SIGINT into KeyboardInterrupt as in a terminal.
    return subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt(process: subprocess.Popen, started: Callable[[], bool], signum: int) -> None:
    try:
        wait_until(lambda: started() or process.poll() is not None)
        assert process.poll() is None, process.stdout.read().decode()
        process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()


def test_ctrl_c_leaves_no_scratch_clone(tmp_path: Path, scratch: Path) -> None:
    process = signalled_rollout(tmp_path, "local", "sample_tasks(None)[:2]", {"TMPDIR": str(scratch)})
    interrupt(process, lambda: len(scratch_clones(scratch)) >= 2, signal.SIGINT)
    assert scratch_clones(scratch) == []


@needs_docker
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_leaves_no_container(tmp_path: Path, signum: int) -> None:
    from forager.runtime.docker import docker_client

    client = docker_client()
    process = signalled_rollout(tmp_path, "docker", f"sample_tasks({SAMPLE_IMAGE!r})[:2]", {})
    owned = {"label": f"forager.owner.pid={process.pid}"}
    interrupt(process, lambda: len(client.containers.list(all=True, filters=owned, sparse=True)) >= 3, signum)
    time.sleep(3)  # a container the engine was still creating would show up by now
    assert client.containers.list(all=True, filters=owned, sparse=True) == []


@needs_docker
def test_a_group_is_announced_to_the_warm_pool_when_it_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GRPO asks for G episodes of one task: the pool checks the other members out while the first runs."""
    import importlib

    from forager.runtime.pool import WarmPool

    rollout = importlib.import_module("forager.train.rollout")
    pools: list[WarmPool] = []
    monkeypatch.setattr(rollout, "make_pool", lambda config: pools.append(WarmPool(config.warm_pool)) or pools[-1])
    buffer = RolloutBuffer(group_size=4, tokens_per_batch=1, max_staleness=4, max_buffered_groups=1)
    with RolloutWorkers(sample_tasks(SAMPLE_IMAGE)[:1], buffer, tmp_path / "run", engine=ScriptedEngine(),
                        collect=CollectConfig(runtime="docker", warm_pool=1), concurrency=1):
        batch = buffer.take_batch(0, timeout=300)
    assert batch is not None and len(batch.groups[0].trajectories) == 4
    pool, = pools
    # One slot: each later member starts after a whole episode, its checkout made meanwhile (of 8 takes:
    # 4 resets, 4 gradings, only the first reset was not announced).
    assert pool.prepared_hits >= 3, pool.stats()
    assert pool.idle() == 0  # closed with the run


# -- the in-process engine, and Ray -----------------------------------------------------------------------

def test_the_hf_engine_samples_groups_in_synchronous_mode(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the engine needs torch (pip install -e '.[train]')")
    from forager.testing.tiny_model import build_tiny_model
    from forager.train.engines.hf import HFEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = HFEngine(str(build_tiny_model()), temperature=1.0, seed=3)
    weights = {name: tensor.clone() for name, tensor in engine.lm.state_dict().items()}
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=0, max_buffered_groups=2,
                           algorithm=AlgorithmConfig(skip_zero_advantage_groups=False))
    agent = AgentConfig(max_turns=2, max_tokens_per_turn=8)
    try:
        with workers(tmp_path / "run", buffer, engine, concurrency=2, agent=agent):
            first = buffer.take_batch(0, timeout=300)
            engine.update_weights(weights, 1)
            buffer.resume()
            second = buffer.take_batch(1, timeout=300)
    finally:
        engine.close()
        torch.set_num_threads(threads)
    for batch, version in ((first, 0), (second, 1)):
        assert batch is not None and len(batch.samples) >= 2
        assert {s.policy_version for s in batch.samples} == {version}
        assert all(s.model_tokens > 0 and s.loss_mask[0] == 0 for s in batch.samples)
    stored = read_trajectories([tmp_path / "run"])
    assert all(t.trainable and len(set(versions(t))) == 1 for t in stored)


def test_ray_refuses_an_in_process_engine(tmp_path: Path) -> None:
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1)
    with pytest.raises(ForagerError, match="Ray actors cannot reach"):
        RolloutWorkers(sample_tasks(None)[:1], buffer, tmp_path, engine=ScriptedEngine(),
                       collect=CollectConfig(runtime="local", ray_address="local"))
    with pytest.raises(ForagerError, match="would never get the learner's weights"):
        RolloutWorkers(sample_tasks(None)[:1], buffer, tmp_path, policy_spec=PolicySpec(name="hf"),
                       collect=CollectConfig(runtime="local", ray_address="local"))


def test_rollout_on_a_local_ray_cluster(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is part of the dev and train extras: pip install -e '.[dev]'")
    spec = PolicySpec(name="forager.testing.scripted_engine:ScriptedEngine", options={"fail_every": 0})
    buffer = RolloutBuffer(group_size=2, tokens_per_batch=1, max_staleness=0, max_buffered_groups=1,
                           algorithm=AlgorithmConfig(skip_zero_advantage_groups=False))
    rollout = RolloutWorkers(sample_tasks(None)[:1], buffer, tmp_path / "run", policy_spec=spec,
                             collect=CollectConfig(runtime="local", ray_address="local"), concurrency=2)
    with rollout:
        first = buffer.take_batch(0, timeout=300)
        rollout.set_policy_version(5)  # the server's weights were updated (here: nothing to update)
        buffer.resume()
        second = buffer.take_batch(5, timeout=300)
    assert first is not None and second is not None and {s.policy_version for s in first.samples} == {0}
    assert all(t.resolved for g in (*first.groups, *second.groups) for t in g.trajectories)
    assert {s.policy_version for s in second.samples} == {5}
    assert len(read_trajectories([tmp_path / "run"])) >= 4
