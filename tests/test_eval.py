"""`forager eval`: pass@k and the resolved rate's standard error against hand computations, and a real run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from forager.core import Trajectory
from forager.eval import pass_at_k, summarize
from tests.conftest import needs_docker


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 0, 5) == 0.0 and pass_at_k(1, 1, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def episode(task: str, sample: int, resolved: bool, repo: str = "acme/a", termination: str = "submitted") -> Trajectory:
    return Trajectory(trajectory_id=f"{task}#{sample}", task_id=task, sample=sample, repo=repo, resolved=resolved,
                      reward=float(resolved), termination=termination, num_turns=4, prompt_tokens=100,
                      completion_tokens=10, timings={"total": 2.0})


def test_a_summary_by_hand() -> None:
    # task x: 2 of 3 resolved; task y: 0 of 3; task z (another repo): 1 of 2
    rows = [episode("x", 0, True), episode("x", 1, True), episode("x", 2, False),
            episode("y", 0, False), episode("y", 1, False), episode("y", 2, False, termination="out_of_turns"),
            episode("z", 0, True, "acme/b"), episode("z", 1, False, "acme/b")]
    summary = summarize(rows)
    assert (summary.tasks, summary.episodes, summary.samples_per_task, summary.resolved) == (3, 8, 3, 3)
    assert summary.resolved_rate == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    per_sample = [2 / 3, 1 / 3, 0.0]  # sample 0: x, z resolved of 3; sample 1: x of 3; sample 2: none of 2
    assert summary.per_sample_rate == pytest.approx(per_sample)
    mean = sum(per_sample) / 3
    stdev = math.sqrt(sum((r - mean) ** 2 for r in per_sample) / 2)
    assert summary.resolved_rate_stderr == pytest.approx(stdev / math.sqrt(3))
    assert summary.pass_at_k[1] == pytest.approx(summary.resolved_rate)
    assert summary.pass_at_k[2] == pytest.approx(((1 - 0 / 3) + 0 + 1) / 3)  # x: 1 - C(1,2)/C(3,2) = 1; z: 1
    assert summary.pass_at_k[3] == pytest.approx((1 + 0) / 2)  # only x and y have 3 samples
    assert summary.per_repo == {"acme/a": {"tasks": 2, "episodes": 6, "resolved_rate": pytest.approx(1 / 3)},
                                "acme/b": {"tasks": 1, "episodes": 2, "resolved_rate": 0.5}}
    assert summary.terminations == {"submitted": 7, "out_of_turns": 1}
    assert (summary.mean_turns, summary.prompt_tokens, summary.wall_s) == (4.0, 800, 16.0)
    one = summarize([episode("x", 0, True), episode("y", 0, False)])  # K = 1: the binomial error over tasks
    assert one.resolved_rate_stderr == pytest.approx(math.sqrt(0.5 * 0.5 / 2))


@needs_docker
def test_forager_eval_run_writes_a_summary_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "forager", "eval", "run", "--episodes", "2", "-k", "2", "--workers", "2",
               "--runtime", "docker", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pass@2" in done.stdout and "100.0%" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["tasks"], summary["episodes"], summary["samples_per_task"]) == (2, 4, 2)
    assert summary["pass_at_k"] == {"pass@1": 1.0, "pass@2": 1.0} and summary["resolved_rate_stderr"] == 0.0
    assert summary["run"]["command"][:3] == ["forager", "eval", "run"] and summary["run"]["collection"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "+4 from before" in again.stdout
    assert json.loads((out / "summary.json").read_text())["episodes"] == 4
    shown = subprocess.run([sys.executable, "-m", "forager", "eval", "summary", str(out)], capture_output=True, text=True)
    assert shown.returncode == 0 and "pass@2" in shown.stdout
