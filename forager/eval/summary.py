"""An evaluation's figures from its trajectories: resolved rate with its standard error, pass@k, and what it cost.

The resolved rate is pass@1 averaged over the K samples of each task (what DeepSWE reports over 16
runs); its standard error is that of the mean over the K sample indices when K > 1, else the
binomial one over the tasks. pass@k is the unbiased estimator of Chen et al. (2021),
`1 - C(n - c, k) / C(n, k)` for a task with c resolved of n samples, averaged over the tasks with at
least k samples. Episodes that failed for the infrastructure's sake are not in the store
(`trajectories.store.INFRA_FAILURES`) and count nowhere.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forager.core import Trajectory
from forager.files import atomic_write_text

SUMMARY_FILE = "summary.json"


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples drawn from n, c of them correct, is correct (unbiased)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalSummary:
    """What an evaluation's trajectories add up to (written as summary.json)."""

    tasks: int
    episodes: int
    samples_per_task: int
    """The most samples any task has (K)."""
    resolved: int
    resolved_rate: float
    """pass@1 averaged over each task's samples, then over the tasks."""
    resolved_rate_stderr: float
    pass_at_k: dict[int, float]
    per_repo: dict[str, dict[str, float]]
    """Per repository: tasks, episodes and resolved rate."""
    terminations: dict[str, int]
    mean_turns: float
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    """Seconds of episodes, summed (the evaluation itself ran them in parallel)."""
    per_sample_rate: list[float] = field(default_factory=list)
    """The resolved rate of each sample index 0..K-1 over the tasks that have it."""
    run: dict[str, Any] = field(default_factory=dict)
    """What produced it: the command line, the policy, the env and the agent config."""
    test_time_scaling: dict[str, Any] | None = None
    """With `--tts N`: N, the resolved rate of the chosen candidates, and each instance's choice and scores."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass_at_k"] = {f"pass@{k}": v for k, v in self.pass_at_k.items()}
        return data


def summarize(trajectories: Iterable[Trajectory], run: dict[str, Any] | None = None) -> EvalSummary:
    """The figures of `trajectories` (any env: a task's episodes are its samples)."""
    rows = list(trajectories)
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for row in rows:
        by_task[row.task_id].append(row)
    k_max = max((len(samples) for samples in by_task.values()), default=0)
    task_rates = [sum(t.resolved for t in samples) / len(samples) for samples in by_task.values()]
    per_sample = [_rate([t.resolved for samples in by_task.values() for t in samples if t.sample == s])
                  for s in sorted({t.sample for t in rows})]
    rate = statistics.fmean(task_rates) if task_rates else 0.0
    if len(per_sample) > 1:
        stderr = statistics.stdev(per_sample) / math.sqrt(len(per_sample))
    else:
        stderr = math.sqrt(rate * (1 - rate) / len(task_rates)) if task_rates else 0.0
    passes = {k: statistics.fmean(pass_at_k(len(s), sum(t.resolved for t in s), k)
                                  for s in by_task.values() if len(s) >= k) for k in range(1, k_max + 1)}
    return EvalSummary(
        tasks=len(by_task), episodes=len(rows), samples_per_task=k_max, resolved=sum(t.resolved for t in rows),
        resolved_rate=rate, resolved_rate_stderr=stderr, pass_at_k=passes, per_repo=_per_repo(by_task),
        terminations=dict(Counter(t.termination for t in rows).most_common()),
        mean_turns=statistics.fmean(t.num_turns for t in rows) if rows else 0.0,
        prompt_tokens=sum(t.prompt_tokens for t in rows), completion_tokens=sum(t.completion_tokens for t in rows),
        wall_s=sum(t.timings.get("total", 0.0) for t in rows), per_sample_rate=per_sample, run=dict(run or {}))


def _rate(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def _per_repo(by_task: dict[str, list[Trajectory]]) -> dict[str, dict[str, float]]:
    repos: dict[str, list[list[Trajectory]]] = defaultdict(list)
    for samples in by_task.values():
        repos[samples[0].repo or samples[0].kind or "-"].append(samples)
    return {repo: {"tasks": len(groups), "episodes": sum(map(len, groups)),
                   "resolved_rate": statistics.fmean(sum(t.resolved for t in g) / len(g) for g in groups)}
            for repo, groups in sorted(repos.items())}


def write_summary(out_dir: str | Path, summary: EvalSummary) -> Path:
    """`out_dir/summary.json`, written whole or not at all."""
    path = Path(out_dir) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary.to_dict(), indent=2) + "\n")
    return path


__all__ = ["SUMMARY_FILE", "EvalSummary", "pass_at_k", "summarize", "write_summary"]
