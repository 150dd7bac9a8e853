"""Env containers on other Docker engines: a second endpoint to this machine's engine (a TCP proxy to its
socket) stands for a remote host. Episodes there match the default engine's, every container of an
episode and of its grading goes there, collection spreads workers over hosts, a refusing host stops
everything before an episode starts, a host that dies mid-run costs only its running episode, and
`forager gc --docker-host` cleans other engines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker.errors
import pytest

from forager.agent.collect import collect
from forager.agent.config import CollectConfig
from forager.agent.loop import make_pool
from forager.core import RuntimeUnavailable
from forager.images.sample import sample_tasks
from forager.policies.reference import ReferencePolicy
from forager.policies.spec import PolicySpec
from forager.runtime.base import LABEL, RUN_ID, owner_labels
from forager.runtime.docker import DockerRuntime, docker_client, reaper
from forager.testing.docker_proxy import DockerSocketProxy
from forager.trajectories.store import INFRA_FAILURES, read_trajectories
from tests.conftest import SAMPLE_IMAGE, needs_docker

pytestmark = [pytest.mark.docker, needs_docker]

DEFAULT = "unix:///var/run/docker.sock"


class SlowReference(ReferencePolicy):
    """The reference policy thinking `delay_s` per turn, so that an episode is in flight when its host dies."""

    def __init__(self, delay_s: float = 0.3) -> None:
        self.delay_s = delay_s

    def act(self, messages, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(self.delay_s)
        return super().act(messages, **kwargs)


@pytest.fixture(scope="module")
def proxy():
    with DockerSocketProxy() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def engine():
    client = docker_client()
    yield client
    client.close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"  # nobody listens once it is closed


def _created(engine, since: float) -> dict[str, dict[str, str]]:
    """Containers this process created since `since`, by id, with their labels (from the engine's events)."""
    stamp = f"{int(since)}.{int(since % 1 * 1e9):09d}"  # the engine reads the digits after the dot as nanoseconds
    events = engine.events(since=stamp, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "create", "label": f"{LABEL}.run={RUN_ID}"})
    return {event["id"]: event["Actor"]["Attributes"] for event in events}


def _gone(engine, ids) -> bool:
    for cid in ids:
        try:
            engine.containers.get(cid)
            return False
        except docker.errors.NotFound:
            pass
    return True


def _collect(tasks, out: Path, hosts: list[str], policy: PolicySpec | None = None, workers: int = 2):
    config = CollectConfig(workers=workers, runtime="docker", docker_hosts=hosts)
    stats = collect(tasks, out, policy=policy or PolicySpec(name="reference"), config=config)
    reaper.drain()
    return stats, {t.task_id: t for t in read_trajectories([out])}


def test_a_runtime_on_another_endpoint_runs_streams_and_is_removed(proxy, engine):
    before = len(proxy.requests())
    with DockerRuntime(SAMPLE_IMAGE, "/repo", command_timeout=30, docker_host=proxy.url) as runtime:
        labels = engine.containers.get(runtime.container_id).labels
        assert labels[LABEL] == "1" and labels[f"{LABEL}.owner.pid"] == str(os.getpid())
        assert runtime.run("head -c 3000000 /dev/zero | wc -c").output == "3000000\n"  # the hijacked stream
        # A half-close passes through: stdin's EOF reaches `cat`, which ends, and its output comes back.
        api = runtime.client.api
        exec_id = api.exec_create(runtime.container_id, ["cat"], stdin=True)["Id"]
        raw = api.exec_start(exec_id, socket=True)._sock
        raw.sendall(b"through the proxy\n")
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(30)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
        raw.close()
        assert received[8:] == b"through the proxy\n"  # after the 8-byte stdout frame header
        cid = runtime.container_id
    reaper.drain()
    assert _gone(engine, [cid])
    went = proxy.requests()[before:]
    assert any("/containers/create" in r for r in went) and any(r.startswith("DELETE ") for r in went)


def test_episodes_through_the_endpoint_match_the_default_engine_and_leave_nothing(proxy, engine, tmp_path):
    tasks = sample_tasks()[:2]
    _, default = _collect(tasks, tmp_path / "default", [])
    creates, since = proxy.count("/containers/create"), time.time()
    stats, remote = _collect(tasks, tmp_path / "remote", [proxy.url])
    created = _created(engine, since)
    assert stats.done == 2 and not stats.infra_failures
    for task in tasks:
        ours, theirs = remote[task.instance_id], default[task.instance_id]
        assert (ours.resolved, ours.reward, ours.termination, ours.num_turns, ours.diff) == \
            (theirs.resolved, theirs.reward, theirs.termination, theirs.num_turns, theirs.diff)
        assert ours.reward_details["tests_status"] == theirs.reward_details["tests_status"]
    # Every container, the episodes' and the gradings', went through the endpoint, labelled, and is gone.
    assert len(created) >= 4 and proxy.count("/containers/create") - creates == len(created)
    assert all(labels[f"{LABEL}.owner.pid"] == str(os.getpid()) for labels in created.values())
    assert _gone(engine, created)


def test_two_workers_on_two_endpoints_both_run_episodes(proxy, engine, tmp_path):
    tasks = sample_tasks()[:2]
    creates, since = proxy.count("/containers/create"), time.time()
    stats, done = _collect(tasks, tmp_path / "run", [DEFAULT, proxy.url])
    created = _created(engine, since)
    assert stats.done == 2 and all(t.resolved for t in done.values())
    through_proxy = proxy.count("/containers/create") - creates
    assert 0 < through_proxy < len(created)  # worker 1's episode there, worker 0's on the default engine
    assert _gone(engine, created)


def test_a_refusing_host_stops_the_collection_before_any_episode(tmp_path):
    closed = _closed_port_url()
    with pytest.raises(RuntimeUnavailable) as caught:
        collect(sample_tasks()[:1], tmp_path / "run", config=CollectConfig(docker_hosts=[DEFAULT, closed]))
    message = str(caught.value)
    assert "1 of 2 Docker host(s) do not answer" in message and f"docker -H {closed} info" in message
    assert DEFAULT not in message and not (tmp_path / "run" / "collection.json").exists()
    with pytest.raises(RuntimeUnavailable, match="do not answer"):
        make_pool(CollectConfig(docker_hosts=[closed]))  # the trainer's rollout checks through the same door


def test_a_host_dying_mid_run_costs_only_its_running_episode(engine, tmp_path):
    tasks = sample_tasks()[:3]
    out = tmp_path / "run"
    policy = PolicySpec(name="tests.test_docker_hosts:SlowReference", options={"delay_s": 0.3})
    dying = DockerSocketProxy().start()
    since = time.time()

    def kill_when_busy() -> None:  # once worker 1's episode has its shell
        deadline = time.monotonic() + 60
        while dying.count("/exec/") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # its reset is done by then, usually: the kill lands in its turns (or in its reset)
        dying.close()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        stats, done = _collect(tasks, out, [DEFAULT, dying.url], policy)
    finally:
        killer.join()
        dying.close()
        left = list(_created(engine, since))  # the dead endpoint's containers could not be removed through it
        for cid in left:
            try:
                engine.containers.get(cid).remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
    failed = list(read_trajectories([out / INFRA_FAILURES]))
    assert len(failed) == 1 and failed[0].metadata["infrastructure_error"]
    assert failed[0].termination == "env_error"
    assert stats.done == 2 and all(t.resolved for t in done.values())  # worker 0 took the rest
    assert set(done) | {failed[0].task_id} == {t.instance_id for t in tasks}


def test_a_command_cut_by_its_engine_going_away_is_the_infrastructures_failure(engine):
    """Not a failed command (which a grading would count against the agent's patch): RuntimeUnavailable."""
    dying = DockerSocketProxy().start()
    runtime = DockerRuntime(SAMPLE_IMAGE, "/repo", command_timeout=30, docker_host=dying.url)
    cid = runtime.container_id
    threading.Timer(0.5, dying.close).start()
    try:
        with pytest.raises(RuntimeUnavailable, match=f"{dying.url} no longer answers"):
            runtime.run_checked("sleep 5")
    finally:
        runtime.close()
        reaper.drain()
        engine.containers.get(cid).remove(force=True, v=True)  # its removal through the dead endpoint failed


def test_gc_cleans_the_engines_it_is_given(proxy, engine):
    dead = subprocess.Popen(["true"])
    dead.wait()
    client = docker_client(proxy.url)
    orphan = client.containers.create(SAMPLE_IMAGE, ["true"],
                                      labels={**owner_labels(), f"{LABEL}.owner.pid": str(dead.pid)})
    client.close()
    closed = _closed_port_url()
    deletes = proxy.count("DELETE ")
    gc = subprocess.run([sys.executable, "-m", "forager", "gc", "--docker-host", closed, "--docker-host", proxy.url],
                        capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert f"{closed} does not answer" in gc.stdout and "removed " in gc.stdout
    assert _gone(engine, [orphan.id]) and proxy.count("DELETE ") > deletes  # removed through that endpoint


def test_the_proxy_closes_everything():
    proxy = DockerSocketProxy().start()
    client = docker_client(proxy.url)
    assert client.ping()
    proxy.close()
    assert not proxy._thread.is_alive()  # type: ignore[union-attr]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=5).close()
    client.close()
