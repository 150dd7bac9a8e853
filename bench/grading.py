"""Time to grade one task against the time to run its tests directly (target: ratio <= 1.5).

    python bench/grading.py [--tasks 8] [--repeats 3]

Grading: `grade_patch` with the task's reference fix: a fresh container, the task's start state,
the filtered patch, the hardened harness, swebench-semantics grading. Directly: `docker run` of
the image with `python -m pytest` on the same tests, which is the least a user could do. Tasks
come from the mutate-fix generator on the sample repository. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

from forager.runtime.registry import open_runtime
from forager.images.sample import build_sample_image
from forager.rewards import grade_patch
from forager.runtime.docker import DockerRuntime, docker_client, reaper
from forager.tasks.mutate_fix import MutateConfig, generate_mutate_fix_tasks


def direct_run_s(client, task) -> float:
    """Seconds of `docker run` of the image with `python -m pytest` on the task's tests: the least a user could do."""
    started = time.monotonic()
    command = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *task.tests]
    container = client.containers.run(task.image, command, detach=True, network_mode="none", working_dir=task.workdir)
    container.wait()
    elapsed = time.monotonic() - started
    container.remove(force=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    client = docker_client()
    image = build_sample_image(client, log=lambda m: None)
    tasks = generate_mutate_fix_tasks(
        functools.partial(DockerRuntime, image, "/repo", client=client), image=image, repo="forager/semverkit",
        config=MutateConfig(max_tasks=args.tasks),
    ).tasks
    grade_s, direct_s, rows = [], [], []
    for task in tasks:
        g, d = [], []
        for _ in range(args.repeats):
            reaper.drain()  # no removal of the last container competes with the next measurement
            started = time.monotonic()
            result = grade_patch(task, task.patch or "", functools.partial(open_runtime, kind="docker"))
            g.append(time.monotonic() - started)
            assert result.resolved, (task.instance_id, result.error)
            reaper.drain()
            d.append(direct_run_s(client, task))
        grade_s.append(statistics.median(g))
        direct_s.append(statistics.median(d))
        rows.append((task.instance_id, len(task.tests), grade_s[-1], direct_s[-1]))
    for name, n, g, d in rows:
        print(f"{name[:60]:60s} {n:4d} tests  grade {g:.3f}s  direct {d:.3f}s  {g / d:.2f}x")
    print(json.dumps({
        "tasks": len(rows),
        "grade_s_median": round(statistics.median(grade_s), 3),
        "direct_s_median": round(statistics.median(direct_s), 3),
        "grade_over_direct": round(sum(grade_s) / sum(direct_s), 2),
    }))


if __name__ == "__main__":
    main()
