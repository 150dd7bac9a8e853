"""The top-level docker-compose.yml: both profiles validate; the cpu stack collects the sample tasks on a Ray cluster
whose episodes run in sibling containers on the host's engine, refuses a second stack writing into the same output
directory, and leaves no container behind when taken down. Also the output directory's lock on its own.

The trainer is not brought up here: its image (`forager images forager --train`) carries torch with its CUDA wheels,
which takes minutes and ~10 GB to build, and the demo it runs takes minutes more; the services are named instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from forager.core import ForagerError, Task
from forager.trajectories.store import TrajectoryWriter, read_trajectories
from tests.conftest import needs_docker

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
EXTENSION = "forager.train.engines.vllm_worker:WeightSyncExtension"


def compose_command() -> list[str] | None:
    """Compose v2 (`docker compose`) or 1.29 (`docker-compose`); FORAGER_COMPOSE names another (a v2 binary, say)."""
    if os.environ.get("FORAGER_COMPOSE"):
        return shlex.split(os.environ["FORAGER_COMPOSE"])
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


COMPOSE = compose_command()
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="needs docker-compose (1.29) or the compose plug-in (v2)")


def compose(project: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180,
            check: bool = True) -> subprocess.CompletedProcess:
    assert COMPOSE is not None
    settings = {k: v for k, v in os.environ.items() if not k.startswith(("FORAGER_", "COMPOSE_"))
                and k not in ("HF_HOME", "DOCKER_SOCKET")}
    cmd = [*COMPOSE, "-f", str(COMPOSE_FILE), "-p", project, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**settings, **(env or {})}, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def profile_services(profile: str, **env: str) -> dict[str, dict]:
    """The services of `profile` as `config` resolves them (1.29 prints every service: its profiles tell them apart)."""
    services = yaml.safe_load(compose("config-check", "--profile", profile, "config", env=env).stdout)["services"]
    return {name: s for name, s in services.items() if profile in s.get("profiles", [])}


def words(command: str | list[str]) -> str:
    return command if isinstance(command, str) else " ".join(command)


def binds(service: dict) -> dict[str, str]:
    """Container path -> host path (1.29 prints `src:dst:mode`, v2 long-form mounts)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


@needs_compose
def test_the_gpu_profile_validates_with_the_samplers_and_the_learner_on_gpus():
    services = profile_services("gpu", FORAGER_MODEL="org/model-7b", FORAGER_VLLM_TP="2", FORAGER_LEARNER_GPUS="2",
                                FORAGER_SEQUENCE_PARALLEL="2")
    assert {"vllm", "trainer-gpu", "ray-head", "ray-worker"} <= set(services)
    assert "collector" not in services and "trainer" not in services
    vllm, trainer = services["vllm"], services["trainer-gpu"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    assert f"--worker-extension-cls {EXTENSION}" in words(vllm["command"])
    assert "org/model-7b" in words(vllm["command"]) and "--tensor-parallel-size 2" in words(vllm["command"])
    assert vllm["environment"]["VLLM_SERVER_DEV_MODE"] == "1"
    command = words(trainer["command"])
    assert "forager train --config configs/train/cwm-32b.yaml" in command
    # The overrides the service passes are keys of the training config, and make the layout asked for.
    from forager.train.config import load_train_config

    overrides = [word for word in shlex.split(command.split("forager train", 1)[1]) if "=" in word and word[0] != "-"]
    config = load_train_config(ROOT / "configs" / "train" / "cwm-32b.yaml", overrides)
    assert (config.model.path, config.learner.num_gpus, config.rollout.tensor_parallel) == ("org/model-7b", 2, 2)
    assert config.rollout.servers == ["http://vllm:8000/v1"]
    for service in (vllm, trainer):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
    assert binds(trainer)["/var/run/docker.sock"] == "/var/run/docker.sock"


@needs_compose
def test_the_cpu_profile_validates_with_ray_a_collector_and_the_demo_trainer(tmp_path):
    services = profile_services("cpu", FORAGER_OUT=str(tmp_path), FORAGER_IMAGE="forager/forager:abc")
    assert set(services) == {"ray-head", "ray-worker", "collector", "trainer"}
    assert all(s["image"] == "forager/forager:abc" for name, s in services.items() if name != "trainer")
    assert "ray start --head" in words(services["ray-head"]["command"])
    collector = words(services["collector"]["command"])
    assert "forager images sample --check" in collector and "ray start --address=ray-head:6379 --num-cpus=0" in collector
    assert "forager collect --runtime docker --ray-address auto --out /out/collect" in collector
    assert "configs/train/cpu-demo.yaml" in words(services["trainer"]["command"])
    for name in ("ray-head", "ray-worker", "collector"):  # where episodes start: the host's engine
        assert binds(services[name]) == {"/var/run/docker.sock": "/var/run/docker.sock", "/out": str(tmp_path)}
    assert binds(services["trainer"]) == {"/out": str(tmp_path)}  # the demo runs on the local runtime


# -- the output directory's lock ----------------------------------------------------------------------------------
HOLD = """
import sys, time
from forager.trajectories.store import TrajectoryWriter
writer = TrajectoryWriter(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def _holder(directory: Path, **env: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, **env}, cwd=ROOT)
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


def test_a_second_collection_names_the_container_that_holds_the_directory_and_a_dead_holder_is_taken_over(
        tmp_path, git_repo):
    from forager.agent.collect import collect
    from forager.agent.config import CollectConfig

    out = tmp_path / "out"
    task = Task(instance_id="demo__one", problem_statement="fix it", local_repo=str(git_repo), base_commit="HEAD")
    holder = _holder(out, FORAGER_CONTAINER_NAME="stack-a_collector_1")
    try:
        with pytest.raises(ForagerError) as refused:
            collect([task], out, config=CollectConfig(runtime="local", workers=1))
        assert str(refused.value) == (f"another collection (container stack-a_collector_1, pid {holder.pid}) is "
                                      f"writing {out}; stop it (docker-compose down) or pick another --out")
        assert not (out / "collection.json").exists()  # refused before it wrote anything
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock, as a killed container's process does
        holder.wait()
    assert str(holder.pid) in (out / ".lock").read_text()  # the dead holder's record is still there
    with TrajectoryWriter(out):  # and the lock is free all the same
        assert f'"pid": "{os.getpid()}"' in (out / ".lock").read_text()
    if Path("/.dockerenv").exists():
        return  # in a container a holder is named by its container (the hostname) even without its name
    plain = _holder(out, FORAGER_CONTAINER_NAME="")
    try:
        with pytest.raises(ForagerError, match=rf"another collection \(pid {plain.pid} on host .+\) is writing .*; "
                                               r"stop it or pick another --out"):
            collect([task], out, config=CollectConfig(runtime="local", workers=1))
    finally:
        plain.kill()
        plain.wait()


@pytest.mark.docker
@needs_docker
def test_the_collector_says_how_to_build_a_missing_sample_image(monkeypatch, tmp_path):
    from forager.images import forager_image
    from forager.images.sample import SampleRepo
    from forager.runtime.docker import docker_client

    monkeypatch.setattr(forager_image, "sample_repo", lambda: SampleRepo(tmp_path, "0" * 40))
    with pytest.raises(ForagerError, match=r"the sample image forager/sample:commit-000000000000 is not on this Docker "
                                           r"engine.*`forager images sample && forager images forager`"):
        forager_image.require_sample_image(docker_client())


# -- the cpu stack, for real ---------------------------------------------------------------------------------------
def _stack_containers(client, project: str) -> list:
    return client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})


def _owned_by(client, hostnames: set[str]) -> list:
    """Episode containers that processes in the stack's containers started (their owner label names the hostname)."""
    return [c for host in hostnames
            for c in client.containers.list(all=True, filters={"label": f"forager.owner.host={host}"},
                                            ignore_removed=True)]  # one may go between the listing and its inspection


@pytest.mark.docker
@needs_compose
@needs_docker
@pytest.mark.timeout(600)
def test_the_cpu_stack_collects_on_ray_refuses_a_second_stack_and_leaves_nothing_behind(tmp_path):
    from forager.images.forager_image import build_forager_image
    from forager.runtime.docker import docker_client

    client = docker_client()
    image = build_forager_image(client, log=lambda line: None)  # seconds when cached; ~3 minutes cold
    out = tmp_path / "out"
    out.mkdir()
    first, second = (f"forager-test-{uuid.uuid4().hex[:8]}" for _ in range(2))
    env = {"FORAGER_OUT": str(out), "FORAGER_IMAGE": image.tag, "FORAGER_SAMPLES_PER_TASK": "10",
           "FORAGER_WORKERS": "2", "FORAGER_RAY_CPUS": "1"}
    hostnames: set[str] = set()
    try:
        # The trainer is left out (see the module's docstring): the services are named.
        compose(first, "--profile", "cpu", "up", "-d", "ray-head", "ray-worker", "collector", env=env)
        stack = {c.labels["com.docker.compose.service"]: c for c in _stack_containers(client, first)}
        hostnames = {c.id[:12] for c in stack.values()}  # a container's hostname is its short id
        ray_nodes = {stack["ray-head"].id[:12], stack["ray-worker"].id[:12]}
        episode_hosts: set[str] = set()
        trajectories = out / "collect" / "trajectories.jsonl"
        deadline = time.monotonic() + 240
        while not (trajectories.exists() and trajectories.read_text().count("\n") >= 2):
            episode_hosts |= {c.labels.get("forager.owner.host") for c in _owned_by(client, hostnames)}
            stack["collector"].reload()
            if time.monotonic() > deadline or stack["collector"].status == "exited":
                logs = compose(first, "--profile", "cpu", "logs", "--tail=60", env=env, check=False).stdout
                pytest.fail(f"no trajectories after 240 s (collector {stack['collector'].status}):\n{logs}")
            time.sleep(1)
        assert episode_hosts and episode_hosts <= ray_nodes  # episodes ran from the Ray nodes, beside the stack

        # A second stack pointed at the same directory: its collector is refused, naming the first one's.
        compose(second, "--profile", "cpu", "up", "-d", "ray-head", "ray-worker", "collector", env=env)
        other = {c.labels["com.docker.compose.service"]: c for c in _stack_containers(client, second)}
        hostnames |= {c.id[:12] for c in other.values()}
        refused = other["collector"]
        deadline = time.monotonic() + 180
        while refused.status != "exited" and time.monotonic() < deadline:
            time.sleep(1)
            refused.reload()
        logs = refused.logs().decode(errors="replace")
        assert refused.attrs["State"]["ExitCode"] == 1, logs[-3000:]
        assert (f"error: another collection (container {stack['collector'].name}, pid " in logs
                and "is writing /out/collect; stop it (docker-compose down) or pick another --out" in logs), logs[-3000:]
        stack["collector"].reload()
        assert stack["collector"].status == "running"  # the first goes on

        # Down while episodes run: each container removes what it started, the collector closes its actors.
        compose(first, "--profile", "cpu", "down", env=env)
        compose(second, "--profile", "cpu", "down", env=env)
        assert _stack_containers(client, first) == [] and _stack_containers(client, second) == []
        assert _owned_by(client, hostnames) == []
        done = read_trajectories([out / "collect"])  # strict: every line whole, none from the refused stack
        assert len(done) >= 2 and len({(t.task_id, t.sample) for t in done}) == len(done)
        assert all(t.resolved for t in done)  # the reference policy replays each task's fix
    finally:
        for project in (first, second):
            compose(project, "--profile", "cpu", "down", "--remove-orphans", env=env, check=False)
        for container in _owned_by(client, hostnames):
            container.remove(force=True)
        client.close()
