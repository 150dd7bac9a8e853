"""`forager collect`: parallel, resumable after SIGKILL, nothing duplicated, nothing leaked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from forager.agent.collect import CollectConfig, PolicySpec, collect
from forager.trajectories.store import read_trajectories
from forager.images.sample import sample_tasks
from forager.runtime.docker import docker_client
from forager.tasks.store import write_tasks
from forager.testing import OpenAIServer
from forager.testing.scripted import reference_responder
from tests.conftest import needs_docker

pytestmark = needs_docker


def _forager(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "forager", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_collect_killed_with_sigkill_resumes_without_duplicates(tmp_path):
    tasks = sample_tasks()[:3]
    tasks_file = tmp_path / "tasks.jsonl"
    write_tasks(tasks, tasks_file)
    out = tmp_path / "run"
    slow = reference_responder(tasks)

    def respond(request):  # slow enough that episodes are in flight when the kill comes
        time.sleep(0.15)
        return slow(request)

    with OpenAIServer(respond) as server:
        args = ["collect", "--tasks", str(tasks_file), "--out", str(out), "--policy", "openai",
                "--base-url", server.base_url, "--model", "toy-model", "-k", "2", "--workers", "2"]
        first = _forager(*args)
        deadline = time.monotonic() + 120
        while _lines(out / "trajectories.jsonl") < 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.stdout.read()
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        written = _lines(out / "trajectories.jsonl")
        assert 2 <= written < 6

        second = _forager(*args)
        output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert f"resuming: {written} of 6 episodes are already in" in output
    trajectories = list(read_trajectories([out]))
    pairs = Counter((t.task_id, t.sample) for t in trajectories)
    assert len(trajectories) == 6 and set(pairs.values()) == {1}
    assert Counter(t.task_id for t in trajectories) == {t.instance_id: 2 for t in tasks}
    assert all(t.resolved and t.trainable for t in trajectories)

    # The killed run's containers are found and removed by `forager gc` (their owner is dead).
    client = docker_client()
    orphans = client.containers.list(all=True, filters={"label": f"forager.owner.pid={first.pid}"}, ignore_removed=True)
    gc = subprocess.run([sys.executable, "-m", "forager", "gc"], capture_output=True, text=True)
    assert gc.returncode == 0
    assert not client.containers.list(all=True, filters={"label": f"forager.owner.pid={first.pid}"}, ignore_removed=True)
    assert orphans  # the killed run's episodes left their containers behind...
    removed = int(gc.stdout.split("removed ")[1].split(" container")[0])
    assert removed >= len(orphans)  # ...and gc removed them (and any other orphans on this engine)

    # A third run has nothing left to do, and a different policy is refused in the same directory.
    third = _forager(*args)
    output, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and "6 of 6 episodes are already in" in output
    fourth = _forager("collect", "--tasks", str(tasks_file), "--out", str(out), "--policy", "reference")
    output, _ = fourth.communicate(timeout=120)
    assert fourth.returncode == 1 and "another policy or agent configuration" in output


def test_collect_runs_workers_in_parallel_and_reports(tmp_path):
    tasks = sample_tasks()
    active, peak, lock = [0], [0], threading.Lock()
    scripted = reference_responder(tasks)

    def respond(request):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        return scripted(request)

    seen = []
    with OpenAIServer(respond) as server:
        stats = collect(tasks, tmp_path, policy=PolicySpec(name="openai", options={
            "base_url": server.base_url, "model": "toy-model"}), config=CollectConfig(workers=4, runtime="docker"),
            on_episode=lambda t, s: seen.append((t.trajectory_id, s.done)))
    assert stats.done == 4 and stats.resolved == 4 and stats.terminations == {"submitted": 4}
    assert peak[0] >= 2  # episodes overlapped
    assert [n for _, n in seen] == [1, 2, 3, 4]
    summary = stats.to_dict()
    assert summary["resolved_share"] == 1.0 and summary["completion_tokens"] > 0 and summary["tokens_per_s"] > 0
    run = json.loads((tmp_path / "collection.json").read_text())
    assert run["policy"]["name"] == "openai" and run["samples_per_task"] == 1


def test_collect_with_a_warm_pool_runs_most_episodes_on_prepared_checkouts(tmp_path, monkeypatch):
    """Each worker announces the episode it runs a wave later, each reset its grading: the pool checks
    them out ahead, and every episode still resolves in a container of its own."""
    import importlib

    from forager.runtime.docker import reaper

    collecting = importlib.import_module("forager.agent.collect")  # the package's `collect` is the function

    pools = []
    make_pool = collecting.make_pool
    monkeypatch.setattr(collecting, "make_pool", lambda config: pools.append(make_pool(config)) or pools[-1])
    tasks = sample_tasks()
    stats = collect(tasks, tmp_path, config=CollectConfig(samples_per_task=2, workers=2, runtime="docker", warm_pool=1))
    assert stats.done == 2 * len(tasks) and stats.resolved == stats.done
    pool, = pools
    # Of 16 takes (8 resets, 8 gradings) the first wave starts cold, and a grading whose preparation
    # was still running when the episode ended takes a plain container; without announcements: none.
    assert pool.prepared_hits >= len(tasks), pool.stats()
    reaper.drain()
    assert not docker_client().containers.list(all=True, filters={"label": "forager"})


def test_collect_cli_defaults_to_the_reference_policy_and_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-m", "forager", "collect", "--out", str(tmp_path / "t"), "--limit", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k not in ("FORAGER_BASE_URL", "OPENAI_BASE_URL")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no model configured" in result.stdout and "reference policy" in result.stdout
    assert "resolved" in result.stdout and "forager view" in result.stdout
    (trajectory,) = read_trajectories([tmp_path / "t"])
    assert trajectory.resolved and trajectory.policy["name"] == "reference"


def test_collect_cli_errors_are_readable(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "forager", "collect", "--tasks", str(tmp_path / "nope.jsonl"),
                              "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "error:" in missing.stdout and "Traceback" not in missing.stdout
    bad_policy = subprocess.run([sys.executable, "-m", "forager", "collect", "--policy", "gpt5", "--out",
                                 str(tmp_path / "o"), "--limit", "1"], capture_output=True, text=True, timeout=120)
    assert bad_policy.returncode == 1 and "unknown policy 'gpt5'" in bad_policy.stdout


def _is_ray_worker(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        return b"ray::" in cmdline or b"default_worker.py" in cmdline
    except OSError:
        return False


def test_collect_on_a_local_ray_cluster(tmp_path):
    pytest.importorskip("ray", reason="Ray is part of the dev and train extras: pip install -e '.[dev]'")
    tasks = sample_tasks()[:2]
    before = {c.id for c in docker_client().containers.list(all=True, filters={"label": "forager=1"}, ignore_removed=True)}
    actor_pids: set[str] = set()

    def watch() -> None:  # the actors' processes, known by the containers they start
        while not stop_watching.is_set():
            try:
                found = docker_client().containers.list(all=True, filters={"label": "forager=1"}, ignore_removed=True)
            except Exception:  # noqa: BLE001 - one removed while listed: look again
                continue
            for c in found:
                pid = c.labels.get("forager.owner.pid", "")
                if c.id not in before and pid not in actor_pids and _is_ray_worker(pid):
                    actor_pids.add(pid)
            time.sleep(0.2)

    stop_watching = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stats = collect(tasks, tmp_path, config=CollectConfig(samples_per_task=2, workers=2, runtime="docker",
                                                          ray_address="local"))
    assert stats.done == 4 and stats.resolved == 4
    trajectories = list(read_trajectories([tmp_path]))
    assert sorted((t.task_id, t.sample) for t in trajectories) == sorted(
        (t.instance_id, k) for t in tasks for k in range(2))
    # Resuming through Ray runs nothing twice either.
    again = collect(tasks, tmp_path, config=CollectConfig(samples_per_task=3, workers=2, runtime="docker",
                                                          ray_address="local"))
    assert again.already_done == 4 and again.done == 2
    assert len(list(read_trajectories([tmp_path]))) == 6
    stop_watching.set()
    assert actor_pids
    # Every actor closed its warm pool before it was killed: no container of the actors is left.
    time.sleep(3)
    mine = [c for c in docker_client().containers.list(all=True, filters={"label": "forager=1"}, ignore_removed=True)
            if c.labels.get("forager.owner.pid") in actor_pids]
    assert mine == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_infrastructure_failures_are_kept_apart_and_retried(tmp_path):
    tasks = sample_tasks()[:2]
    tasks_file = tmp_path / "tasks.jsonl"
    write_tasks(tasks, tasks_file)
    out, port = tmp_path / "run", _free_port()
    args = ["-m", "forager", "collect", "--tasks", str(tasks_file), "--out", str(out), "--policy", "openai",
            "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "toy-model", "--policy-option", "max_retries=0",
            "-j", "2", "--warm-pool", "0"]
    down = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert down.returncode == 1, down.stdout + down.stderr  # nothing succeeded: a failure, not a finished run
    assert "nothing succeeded" in down.stdout and "infrastructure failures" in down.stdout
    assert _lines(out / "trajectories.jsonl") == 0  # no sample of the policy...
    failed = list(read_trajectories([out / "infra_failures"]))  # ...but nothing lost
    assert len(failed) == 2 and all(t.termination == "policy_error" and t.metadata["infrastructure_error"]
                                    for t in failed)
    with OpenAIServer(reference_responder(tasks), port=port):  # the server is back: the same command
        up = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "already in" not in up.stdout  # the failures did not count as done
    done = list(read_trajectories([out]))  # readers of the collection see only the finished samples
    assert len(done) == 2 and all(t.resolved for t in done)


def test_a_rejected_policy_writes_nothing(tmp_path):
    out = tmp_path / "o"
    bad = subprocess.run([sys.executable, "-m", "forager", "collect", "--policy", "nosuch", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown policy 'nosuch'" in bad.stdout and not out.exists()
    options = subprocess.run([sys.executable, "-m", "forager", "collect", "--policy", "reference", "--policy-option",
                              "bogus=1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert options.returncode == 1 and "does not take these options" in options.stdout and not out.exists()
    good = subprocess.run([sys.executable, "-m", "forager", "collect", "--policy", "reference", "--out", str(out),
                           "--limit", "1"], capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stdout  # not refused as "another policy"


def test_sigterm_stops_collect_and_leaves_no_container(tmp_path):
    tasks = sample_tasks()[:3]
    tasks_file = tmp_path / "tasks.jsonl"
    write_tasks(tasks, tasks_file)
    slow = reference_responder(tasks)

    def respond(request):
        time.sleep(0.3)
        return slow(request)

    client = docker_client()
    with OpenAIServer(respond) as server:
        proc = subprocess.Popen([sys.executable, "-m", "forager", "collect", "--tasks", str(tasks_file), "--out",
                                 str(tmp_path / "run"), "--policy", "openai", "--base-url", server.base_url, "--model",
                                 "toy-model", "-k", "2", "-j", "2", "--warm-pool", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        owned = {"label": f"forager.owner.pid={proc.pid}"}
        deadline = time.monotonic() + 120
        while len(client.containers.list(all=True, filters=owned, sparse=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # episodes running, warm-ups starting
        assert proc.wait(timeout=90) == -signal.SIGTERM
    time.sleep(3)  # a container the engine was still creating would show up by now
    assert client.containers.list(all=True, filters=owned, sparse=True) == []
