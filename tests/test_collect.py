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
    orphans = client.containers.list(all=True, filters={"label": f"forager.owner.pid={first.pid}"})
    gc = subprocess.run([sys.executable, "-m", "forager", "gc"], capture_output=True, text=True)
    assert gc.returncode == 0
    assert not client.containers.list(all=True, filters={"label": f"forager.owner.pid={first.pid}"})
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


def test_collect_on_a_local_ray_cluster(tmp_path):
    pytest.importorskip("ray", reason="Ray is part of the dev and train extras: pip install -e '.[dev]'")
    tasks = sample_tasks()[:2]
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
