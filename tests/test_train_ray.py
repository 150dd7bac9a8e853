"""The learner's ranks as Ray actors (`forager.train.ray_learner`) on a real two-node Ray cluster on this machine.

The cluster: two `ray start --block` processes, a head and a worker, each with its own `--temp-dir` and ports
(Ray runs several nodes on one machine; `ray.cluster_utils.Cluster` would too, but separate `ray start`s make
`forager train` a plain client of an outside cluster, as on a real one). `--block` keeps each node's processes
children of one process that stops them all on SIGTERM, so the finalizer ends exactly this cluster, never another
Ray on the machine as `ray stop` would. Fast GCS health checks: a killed node is declared dead in a second or two.
Token authentication is off for the cluster and its drivers alike: Ray 2.60 turns it on by itself when
`~/.ray/auth_token` exists (a local `ray.init()` anywhere on the machine writes one), and then refuses a node
started without it.

Real parts: the tiny transformers model, gloo FSDP2 ranks one per node (STRICT_SPREAD), the CLI in a subprocess,
the sample tasks on the local runtime. The dead node is the worker's raylet killed with SIGKILL mid-run.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs torch (pip install -e '.[train]')")
pytest.importorskip("ray", reason="the Ray layout needs ray (pip install -e '.[train]')")

from forager.core import ForagerError  # noqa: E402
from forager.train.checkpoint import latest  # noqa: E402
from forager.train.config import load_train_config  # noqa: E402
from forager.train.metrics import read_metrics  # noqa: E402
from forager.train.ray_learner import RankPlace, learner_ranks, rank_env  # noqa: E402
from forager.train.sections import LearnerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"
SPREAD = ["learner.ranks=2", "learner.placement_strategy=STRICT_SPREAD", "learner.placement_timeout_s=60"]
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
NODE_UP_S = 60.0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalCluster:
    """A head and worker nodes, each one `ray start --block` process (its own temp dir and ports)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, **NO_AUTH, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "TMPDIR": str(root / "scratch"),  # the rollout's scratch clones stay in the cluster's directory
                    "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                    "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        (root / "scratch").mkdir(parents=True, exist_ok=True)

    def start_node(self, name: str, head: bool = False) -> None:
        """Start a node's `ray start --block`; `wait_node` waits for it (a worker retries until the head answers)."""
        args = ["ray", "start", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--temp-dir",
                str(self.root / name), "--disable-usage-stats", "--dashboard-agent-listen-port", str(_free_port())]
        if head:
            args += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                     "--ray-client-server-port", str(_free_port())]
        else:
            args += ["--address", self.address]
        with (self.root / f"{name}.log").open("w") as sink:
            self.nodes[name] = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def wait_node(self, name: str) -> None:
        log = self.root / f"{name}.log"
        deadline = time.monotonic() + NODE_UP_S
        while "Ray runtime started" not in log.read_text():
            assert self.nodes[name].poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{name} did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)

    def raylet_of(self, name: str) -> int:
        """The pid of a node's raylet (a child of its `ray start --block` process)."""
        parent = self.nodes[name].pid
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" ", 1)
            except OSError:
                continue
            comm, fields = rest.rsplit(") ", 1)
            if comm.lstrip("(") == "raylet" and int(fields.split()[1]) == parent:
                return int(pid)
        raise AssertionError(f"no raylet under {name}")

    def stop(self) -> None:
        """SIGTERM each node's `ray start --block` (it stops its node's processes), workers first; then SIGKILL."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            node = self.nodes[name]
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=10)

    def state(self) -> dict:
        """The cluster as a driver sees it: alive nodes, placement groups' states, free and total CPUs."""
        script = ("import json, ray\n"
                  f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                  "groups = ray.util.placement_group_table()\n"
                  "print(json.dumps({'nodes': sum(n['Alive'] for n in ray.nodes()),\n"
                  "    'groups': sorted(g['state'] for g in groups.values()),\n"
                  "    'cpu_free': ray.available_resources().get('CPU', 0), 'cpu': ray.cluster_resources()['CPU']}))\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=self.env,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    # Short: Ray's unix sockets live under the temp dir, and a socket path has at most 107 characters.
    root = Path(tempfile.mkdtemp(prefix="fray", dir="/tmp"))
    nodes = LocalCluster(root)
    try:
        nodes.start_node("head", head=True)
        nodes.start_node("worker")
        nodes.wait_node("head")
        nodes.wait_node("worker")
        yield nodes
    finally:
        nodes.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_model() -> str:
    from forager.testing.tiny_model import build_tiny_model

    return str(build_tiny_model())


def command(cluster: LocalCluster, out: Path, model: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "forager", "train", "--config", str(TINY_CONFIG), "--out", str(out),
            "--ray-address", cluster.address, f"model.path={model}", *overrides]


def child_env(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return {**os.environ, **NO_AUTH, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch),
            "COLUMNS": "200"}


def run(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=child_env(tmp_path), cwd=ROOT)


# -- the layout, without a cluster -----------------------------------------------------------------------------
def test_gpu_ranks_of_a_node_share_its_gpus_and_take_their_own_as_local_rank() -> None:
    places = [RankPlace(0, "10.0.0.1", "node-a", 11, ("3",), port=29500),
              RankPlace(1, "10.0.0.1", "node-a", 12, ("1",)), RankPlace(2, "10.0.0.2", "node-b", 13, ("0",))]
    envs = rank_env(places, gpus=True)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["1,3", "1,3", "0"]
    assert [env["LOCAL_RANK"] for env in envs] == ["1", "0", "0"]
    assert [env["LOCAL_WORLD_SIZE"] for env in envs] == ["2", "2", "1"]
    assert {(env["MASTER_ADDR"], env["MASTER_PORT"], env["WORLD_SIZE"]) for env in envs} == {("10.0.0.1", "29500", "3")}
    assert [env["RANK"] for env in envs] == ["0", "1", "2"]
    assert "CUDA_VISIBLE_DEVICES" not in rank_env(places, gpus=False)[0]


def test_the_rank_count_comes_from_the_gpus_or_learner_ranks() -> None:
    assert learner_ranks(LearnerConfig()) == 1
    assert learner_ranks(LearnerConfig(ranks=3)) == 3
    assert learner_ranks(LearnerConfig(num_gpus=4)) == learner_ranks(LearnerConfig(num_gpus=4, ranks=4)) == 4
    with pytest.raises(ForagerError, match=r"learner.ranks \(2\) differs from learner.num_gpus \(4\)"):
        learner_ranks(LearnerConfig(num_gpus=4, ranks=2))


# -- on the cluster ----------------------------------------------------------------------------------------------
def fixed_samples(count: int, vocab: int, seed: int = 7) -> list:
    """Two-turn episodes of random tokens with mixed advantages: a batch with signal, the same in every process."""
    from forager.train.samples import TrainSample

    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        mask = [0] * rng.randrange(5, 20) + [1] * rng.randrange(3, 12) + [0] * rng.randrange(3, 10) + \
            [1] * rng.randrange(3, 12)
        ids = [rng.randrange(3, vocab) for _ in mask]
        logprobs = [-math.log(vocab) + rng.gauss(0, 0.1) if m else 0.0 for m in mask]
        samples.append(TrainSample(ids, mask, logprobs, rng.choice([-1.0, -0.5, 0.5, 1.0])))
    return samples


def _step_as_rank(config: dict, model: str, samples: list) -> tuple | None:
    """What the loop does for one step, as one rank: join the group, take its share, step, gather the weights."""
    import torch
    import torch.distributed as dist

    from forager.train import ranks
    from forager.train.config import TrainConfig
    from forager.train.learner import Learner

    torch.set_num_threads(1)
    created = ranks.init_process_group()
    try:
        rank, world_size = ranks.rank_and_world()
        learner = Learner.from_config(TrainConfig.model_validate(config), model_path=model)
        metrics = learner.step(ranks.share(samples, rank, world_size))
        weights = learner.full_state_dict()  # every rank gathers
        return (weights, metrics, world_size, dist.get_backend(), type(learner.model).__name__) if rank == 0 else None
    finally:
        if created:
            dist.destroy_process_group()


def test_two_ranks_on_two_nodes_take_the_step_one_process_takes(cluster: LocalCluster, tiny_model: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two gloo FSDP2 ranks, one per node, step on a fixed batch split as the loop splits it; the weights and the
    step's figures equal one process stepping on the whole batch."""
    import ray
    import torch
    from ray import cloudpickle

    from forager.train.learner import Learner
    from forager.train.ray_learner import RayLearnerGroup

    config = load_train_config(TINY_CONFIG, [f"model.path={tiny_model}", *SPREAD])
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    for key, value in NO_AUTH.items():
        monkeypatch.setenv(key, value)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        with RayLearnerGroup(ray, config.learner) as group:
            assert len({place.node_id for place in group.places}) == 2  # STRICT_SPREAD: one rank per node
            samples = fixed_samples(8, vocab=json.loads((Path(tiny_model) / "config.json").read_text())["vocab_size"])
            results = group.run(_step_as_rank, config.model_dump(mode="json"), tiny_model, samples)
        assert [g["state"] for g in ray.util.placement_group_table().values()] == ["REMOVED"]  # closed
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    weights, sharded, world_size, backend, model_class = results[0]
    assert results[1] is None and world_size == 2 and backend == "gloo" and model_class.startswith("FSDP")

    torch.set_num_threads(1)
    learner = Learner.from_config(config, model_path=tiny_model)
    before = learner.full_state_dict()
    metrics = learner.step(samples)
    assert metrics["learner/skipped"] == 0.0 and metrics["learner/policy_version"] == 1.0
    for key in ("loss/total", "optim/grad_norm", "loss/tokens", "perf/tokens", "perf/samples", "policy/entropy",
                "learner/policy_version"):
        assert sharded[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-9), key
    single = learner.full_state_dict()
    assert single.keys() == weights.keys()
    assert any(not torch.equal(single[name], before[name]) for name in single)  # the step moved the weights
    for name, value in single.items():
        # fp32 sums in another order on two ranks: AdamW moves a weight by about lr (1e-4) whatever its gradient,
        # so a nearly cancelling gradient may differ in sign; 1e-6 is 1% of one step.
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_a_cluster_without_room_fails_after_the_timeout_naming_what_was_asked_and_what_it_has(
        cluster: LocalCluster, tiny_model: str, tmp_path: Path) -> None:
    started = time.monotonic()
    done = run(command(cluster, tmp_path / "run", tiny_model, "learner.ranks=3",
                       "learner.placement_strategy=STRICT_SPREAD", "learner.placement_timeout_s=2"), tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    text = " ".join(done.stdout.split())  # rich wraps long lines
    assert "the Ray cluster has no room for the learner after 2 s: asked for 3 rank(s), each a bundle of {CPU: 1}, " \
           "placed STRICT_SPREAD; the cluster has 2 alive node(s): " in text, text
    assert text.count("CPU 2/2 free") == 2 and "learner.placement_timeout_s" in text
    assert time.monotonic() - started < 60
    state = cluster.state()
    assert state["cpu_free"] == state["cpu"] == 4 and set(state["groups"]) <= {"REMOVED"}


def test_a_dead_node_ends_the_run_saying_where_and_when_and_the_same_command_resumes(
        cluster: LocalCluster, tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = command(cluster, out, tiny_model, *SPREAD, "learner.steps=2", "checkpoint.interval=1")
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        child = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=child_env(tmp_path), cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while "step 1/2" not in log.read_text():  # the driver relayed step 1 (and its checkpoint)
            assert child.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no step in time"
            time.sleep(0.1)
        os.kill(cluster.raylet_of("worker"), signal.SIGKILL)  # the worker node dies mid-run
        killed = time.monotonic()
        child.wait(timeout=150)
    finally:
        if child.poll() is None:
            child.kill()
    text = " ".join(log.read_text().split())
    assert child.returncode == 1, text[-3000:]
    assert time.monotonic() - killed < 90
    died = re.search(r"error: learner rank (\d) on node \S+ \(\w{8}\) died during step (\d+) \(([^)]*)\); "
                     r"the run keeps checkpoint step-(\d{6}); run the same command to resume from it", text)
    assert died, text[-3000:]
    rank, step, cause, kept = int(died[1]), int(died[2]), died[3], int(died[4])
    assert rank in (0, 1) and "node" in cause and (step, kept) == (2, 1)
    assert latest(out).name == f"step-{kept:06d}"
    state = cluster.state()  # torn down: no placement group holds anything on the node that is left
    assert state["nodes"] == 1 and set(state["groups"]) <= {"REMOVED"} and state["cpu_free"] == state["cpu"] == 2

    cluster.start_node("worker-2")  # the node comes back (the placement waits for it); the same command resumes
    done = run(args, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / f'step-{kept:06d}'}" in " ".join(done.stdout.split())
    lines = read_metrics(out)
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:  # the learner's counts are summed over the two ranks: the whole batch, once
        assert line["perf/samples"] == line["samples"] >= 2
    newest = latest(out)
    assert newest.name == "step-000002"
    assert sorted(p.name for p in newest.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert json.loads((newest / "forager.json").read_text())["world_size"] == 2

    # A rank's own error reaches the command as the error it is, saying which rank raised it; nothing is held after.
    refused = run([*args, "learner.lr=0.5"], tmp_path)
    text = " ".join(refused.stdout.split())
    assert refused.returncode == 1, text[-3000:] + refused.stderr[-3000:]
    assert re.search(r"error: learner rank 0 on node \S+ \(\w{8}\): \S+ holds a run with another config "
                     r"\(learner\.lr differ\)", text), text[-3000:]
    state = cluster.state()
    assert set(state["groups"]) <= {"REMOVED"} and state["cpu_free"] == state["cpu"] == 4
