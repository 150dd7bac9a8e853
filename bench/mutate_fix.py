"""Mutate-fix generation on an image: throughput, yield per operator, and what coverage-selected
validation saves over running the whole suite for every mutation.

    python bench/mutate_fix.py [--image forager/repo-cachetools:TAG] [--max 40] [--workers 1] [--out tasks.jsonl]

Without --image it builds and uses the sample image. The project's name and test command come from
the image as `forager tasks mutate` takes them (the verified command, else its labels). For every
valid candidate the same fork server also runs the whole suite on the mutated tree, and the two
times are compared (target: speedup >= 5). Those comparison runs are excluded from the throughput
figure. Last line: one JSON object. `selection_speedup` compares wall-clock times,
`selection_speedup_cpu` the CPU time of the pytest processes (the same ratio on a machine that
other work shares).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

from forager.core import DEFAULT_TEST_COMMAND
from forager.images.manifest import Manifest
from forager.images.sample import build_sample_image
from forager.runtime.docker import DockerRuntime, docker_client
from forager.tasks.mutate_fix import MutateConfig, generate_mutate_fix_tasks
from forager.tasks.store import write_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None, help="a built image (default: the sample image)")
    parser.add_argument("--workdir", default="/repo")
    parser.add_argument("--max", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the tasks here")
    args = parser.parse_args()

    client = docker_client()
    image = args.image or build_sample_image(client, log=lambda m: None)
    labels = client.images.get(image).labels or {}
    built = Manifest().get(image)
    name = labels.get("forager.name") or ("semverkit" if args.image is None else image.split(":")[0].split("/")[-1])
    started = time.monotonic()
    report = generate_mutate_fix_tasks(
        functools.partial(DockerRuntime, image, args.workdir, client=client), image=image, repo=name,
        config=MutateConfig(max_tasks=args.max, workers=args.workers, seed=args.seed), measure_whole_suite=True,
        test_command=(built.test_command if built else None) or labels.get("forager.test_command")
        or DEFAULT_TEST_COMMAND,
    )
    wall = time.monotonic() - started
    if args.out:
        write_tasks(report.tasks, args.out)
    selected = [t["selected_s"] for t in report.timings if "whole_s" in t]
    whole = [t["whole_s"] for t in report.timings if "whole_s" in t]
    cpu = [(t["selected_cpu_s"], t["whole_cpu_s"]) for t in report.timings if t.get("whole_cpu_s")]
    if not selected:
        raise SystemExit(f"no valid candidate to time among {report.candidates} candidates")
    generation_s = wall - sum(whole)  # without the comparison runs
    print(f"{'operator':20s} {'tried':>6s} {'valid':>6s} {'yield':>6s}")
    for op, s in sorted(report.stats.items()):
        print(f"{op:20s} {s.tried:6d} {s.valid:6d} {s.yield_:6.0%}")
    print(f"{image}: {len(report.tasks)} tasks in {generation_s:.1f}s (coverage {report.coverage_s:.1f}s, "
          f"{report.tests_passing}/{report.tests_total} tests pass); validation of a mutation: covering tests "
          f"{statistics.median(selected):.3f}s median, whole suite {statistics.median(whole):.3f}s median")
    print(json.dumps({
        "image": image,
        "tests": report.tests_total,
        "tasks": len(report.tasks),
        "candidates_tried": sum(s.tried for s in report.stats.values()),
        "tasks_per_minute": round(60 * len(report.tasks) / generation_s, 1),
        "coverage_s": round(report.coverage_s, 2),
        "selected_validation_s_median": round(statistics.median(selected), 3),
        "whole_suite_validation_s_median": round(statistics.median(whole), 3),
        "selection_speedup": round(sum(whole) / sum(selected), 2),
        # CPU seconds of the pytest processes: what the wall-clock ratio is when nothing else runs
        "selection_speedup_cpu": round(sum(w for _, w in cpu) / sum(s for s, _ in cpu), 2) if cpu else None,
        "candidates_s": round(report.candidates_s, 2),
        "yield_per_operator": {op: round(s.yield_, 3) for op, s in sorted(report.stats.items())},
        "workers": args.workers,
    }))


if __name__ == "__main__":
    main()
