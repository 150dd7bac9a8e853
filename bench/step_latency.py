"""Round trip of a trivial command through SWEEnv.step on Docker, against a fresh `docker exec` per command.

    python bench/step_latency.py [--steps 300] [--resets 5]

Prints a table, then one JSON line: step_p50_ms, step_p95_ms, docker_exec_p50_ms, speedup, reset_ms.
Targets: step_p50_ms <= 5 and speedup >= 10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

import gymnasium

import forager.envs  # noqa: F401 - registers forager/SWE-v0
from forager.images.sample import build_sample_image, sample_tasks
from forager.runtime.docker import docker_client


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--resets", type=int, default=5)
    args = parser.parse_args()

    image = build_sample_image(docker_client(), log=lambda m: None)
    task = sample_tasks(image)[0]
    env = gymnasium.make("forager/SWE-v0", task=task, runtime="docker", max_turns=args.steps + 10)
    try:
        reset_s = []
        for seed in range(args.resets):
            started = time.perf_counter()
            env.reset(seed=seed)
            reset_s.append(time.perf_counter() - started)
        action = "<tool: bash>\ntrue\n</tool>"
        for _ in range(10):  # warm-up
            env.step(action)
        step_s = []
        for _ in range(args.steps - 10):
            started = time.perf_counter()
            env.step(action)
            step_s.append(time.perf_counter() - started)

        container = env.unwrapped.runtime.container_id
        exec_s = []
        for _ in range(max(30, args.steps // 5)):  # each costs tens of ms; fewer samples keep it quick
            started = time.perf_counter()
            subprocess.run(["docker", "exec", "-w", task.workdir, container, "bash", "-c", "true"], check=True)
            exec_s.append(time.perf_counter() - started)
    finally:
        env.close()

    figures = {
        "step_p50_ms": round(percentile(step_s, 0.5) * 1e3, 3),
        "step_p95_ms": round(percentile(step_s, 0.95) * 1e3, 3),
        "docker_exec_p50_ms": round(percentile(exec_s, 0.5) * 1e3, 3),
        "speedup": round(percentile(exec_s, 0.5) / percentile(step_s, 0.5), 1),
        "reset_ms": round(statistics.median(reset_s) * 1e3, 1),
        "steps": len(step_s),
        "docker_exec_samples": len(exec_s),
    }
    print(f"SWEEnv.step('true') over {len(step_s)} steps: p50 {figures['step_p50_ms']} ms, p95 {figures['step_p95_ms']} ms")
    print(f"fresh `docker exec` per command over {len(exec_s)} runs: p50 {figures['docker_exec_p50_ms']} ms")
    print(f"speed-up {figures['speedup']}x; env.reset (new container + task checkout) median {figures['reset_ms']} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
