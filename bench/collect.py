"""Trajectory collection throughput: the reference policy on the sample repository's mutate-fix tasks.

    python bench/collect.py [--tasks 32] [--workers 1 4 16] [--policy reference|openai]

The tasks are generated once with the mutate-fix generator (cached under $FORAGER_HOME/bench). For
each worker count, every task runs one episode in its own container (reset, tool calls, grading in a
fresh container). Reported per worker count: episodes per minute, environment steps per second,
and the share of the summed episode time spent in Forager itself, that is, not in the policy, not
in the commands the agent ran, and not in the graded test run (container start-up and removal,
checkout, patching, the shell protocol and bookkeeping all count as Forager's). `--policy openai`
puts a local HTTP server speaking the OpenAI API (forager.testing) in front of the same scripted
actions, to include a real HTTP round trip per turn. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

from forager.agent.collect import collect
from forager.agent.config import CollectConfig
from forager.home import forager_home
from forager.images.sample import build_sample_image
from forager.policies.spec import PolicySpec
from forager.runtime.docker import DockerRuntime, docker_client
from forager.tasks.mutate_fix import MutateConfig, generate_mutate_fix_tasks
from forager.tasks.store import load_tasks, write_tasks


def sample_mutate_fix_tasks(count: int, seed: int = 0) -> list:
    client = docker_client()
    image = build_sample_image(client, log=lambda m: None)
    path = forager_home() / "bench" / f"sample-mutate-fix-{image.split(':')[-1]}-{count}-{seed}.jsonl"
    if path.exists():
        return load_tasks(path)
    report = generate_mutate_fix_tasks(
        functools.partial(DockerRuntime, image, "/repo", client=client), image=image, repo="forager/semverkit",
        config=MutateConfig(max_tasks=count, seed=seed),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tasks(report.tasks, path)
    return report.tasks


def run(tasks: list, workers: int, policy: PolicySpec, warm_pool: int, keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="forager-bench-collect-") as tmp:
        out = keep / f"workers{workers}-pool{warm_pool}" if keep else tmp
        started = time.monotonic()
        stats = collect(tasks, out, policy=policy, config=CollectConfig(workers=workers, runtime="docker",
                                                                             warm_pool=warm_pool))
        wall = time.monotonic() - started
    t = stats.time_in
    outside = t["policy"] + t["commands"] + t["tests"]
    return {
        "workers": workers, "warm_pool": warm_pool, "episodes": stats.done, "resolved": stats.resolved, "wall_s": round(wall, 2),
        "episodes_per_minute": round(60 * stats.done / wall, 1),
        "env_steps_per_s": round(stats.turns / wall, 2),
        "episode_s_mean": round(t["total"] / max(stats.done, 1), 2),
        "forager_share": round(1 - outside / t["total"], 3) if t["total"] else None,
        "time_in_s": {k: round(v, 1) for k, v in sorted(t.items())},
        "terminations": dict(stats.terminations),
        "unresolved": stats.unresolved[:10],
        "errors": stats.errors[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--policy", choices=["reference", "openai"], default="reference")
    parser.add_argument("--keep", type=Path, default=None, help="keep the trajectories under this directory")
    parser.add_argument("--warm-pool", type=int, nargs="+", default=[0, 2],
                        help="containers kept warm per image (0: none); every worker count runs with each")
    args = parser.parse_args()

    tasks = sample_mutate_fix_tasks(args.tasks)
    server = None
    if args.policy == "openai":
        from forager.testing.openai_server import OpenAIServer
        from forager.testing.scripted import reference_responder

        server = OpenAIServer(reference_responder(tasks)).start()
        policy = PolicySpec(name="openai", options={"base_url": server.base_url, "model": "toy-model"})
    else:
        policy = PolicySpec(name="reference")
    results = []
    try:
        for workers, warm in [(w, p) for w in args.workers for p in args.warm_pool]:
            result = run(tasks, workers, policy, warm, args.keep)
            results.append(result)
            print(f"{workers:3d} workers, warm pool {warm}: {result['episodes']} episodes in {result['wall_s']:.1f}s = "
                  f"{result['episodes_per_minute']:.1f}/min, {result['env_steps_per_s']:.2f} steps/s, "
                  f"{result['forager_share']:.0%} of episode time in Forager "
                  f"({result['resolved']} resolved; {result['terminations']})", flush=True)
    finally:
        if server is not None:
            server.close()
    print(json.dumps({"benchmark": "collect", "policy": args.policy, "tasks": len(tasks), "runs": results}))


if __name__ == "__main__":
    main()
