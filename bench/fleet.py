"""The environment fleet on this machine: reset latency, many concurrent envs, collection at scale, grading.

    python bench/fleet.py [--resets 20] [--think-s 1.5] [--envs 64] [--workers 1 4 16 64] [--skip ...]

- reset: `SWEEnv.reset()` to the first observation on the sample tasks, cold (no pool: `docker run`,
  the shell, the checkout) and warm (a pool told what comes: the env draws its next task ahead and
  the pool checks it out while the agent "thinks" for --think-s), against a bare `docker run` of the
  same image (create, start, exit) in the same run.
- envs: --envs episodes open at once (reset, one command each, all held), with the Forager process's
  memory per env (the larger of its RSS growth and the Python heap the open envs hold, by
  tracemalloc, divided by their count) and the engine's memory per
  container (the cgroup's usage from the engine's stats, and the RSS of its containerd shim), then
  closed with nothing left behind.
- collect: episodes per minute of the reference policy on the sample repository's mutate-fix tasks
  at each worker count, with a warm pool, and where the episodes' time went (policy, reset, the
  commands, Forager's step overhead, grading beyond the tests, the tests).
- grading: `grade_patch` of each task's reference fix through a warm pool that prepared the grading
  container while the episode ran, against a bare `docker run` of pytest on the same tests.
- split: collection episodes per minute with the env fleet split over two Docker endpoints
  (`CollectConfig.docker_hosts`: the local socket and a TCP proxy to it, `forager.testing.docker_proxy`)
  against one (the socket, named as a host so that both take the same code path), and with every worker
  on the proxy, the same workers and tasks, without a warm pool (a pool per host would start twice the
  containers ahead, and the figure would compare pool sizes). Here
  both endpoints are the same engine, so this measures what the second endpoint costs (the proxy's
  copying) and that the split works, not extra capacity: on real hosts each brings its own CPUs.

A picture of where the time goes at each worker count: --svg (default fleet.svg).
Last line: one JSON object (reset_p50_ms cold and warm, bare_docker_run_ms, envs_concurrent,
host_mb_per_env, container_mb, episodes_per_min per worker count, grading_over_raw, split_episodes_per_min).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gymnasium
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import forager.envs  # noqa: E402,F401 - registers forager/SWE-v0
from collect import run as run_collection, sample_mutate_fix_tasks  # noqa: E402
from grading import direct_run_s  # noqa: E402
from forager.agent.collect import collect  # noqa: E402
from forager.agent.config import CollectConfig  # noqa: E402
from forager.images.sample import build_sample_image, sample_tasks  # noqa: E402
from forager.policies.spec import PolicySpec  # noqa: E402
from forager.rewards import grade_patch  # noqa: E402
from forager.rewards.grading import grading_preparation  # noqa: E402
from forager.runtime.base import LABEL  # noqa: E402
from forager.runtime.docker import docker_client, reaper  # noqa: E402
from forager.runtime.pool import WarmPool  # noqa: E402
from forager.runtime.registry import open_runtime  # noqa: E402
from forager.testing.docker_proxy import DockerSocketProxy  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bare_docker_run_ms(client, image: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        container = client.containers.run(image, ["true"], detach=True, network_mode="none")
        container.wait()
        times.append(time.perf_counter() - started)
        container.remove(force=True)
    return 1000 * statistics.median(times)


def reset_latency(tasks: list, resets: int, think_s: float, pool: WarmPool | None) -> list[float]:
    """Reset times in ms: the first reset of a pooled env is left out (nothing was announced before it)."""
    env = gymnasium.make("forager/SWE-v0", tasks=tasks, runtime="docker", warm_pool=pool or 0).unwrapped
    times = []
    try:
        env.reset(seed=0)
        for _ in range(resets):
            time.sleep(think_s)  # the agent's turns; the pool prepares the next task meanwhile
            reaper.drain()  # the last episode's container removal is not the next reset's cost
            started = time.perf_counter()
            env.reset()
            times.append(1000 * (time.perf_counter() - started))
    finally:
        env.close()
    return times


def ours(client) -> list:
    return client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)


def concurrent_envs(tasks: list, count: int, client) -> dict:
    """`count` envs reset and held at once: Forager's memory per env and the engine's per container."""
    process = psutil.Process()
    gc.collect()
    before_mb = process.memory_info().rss / 2**20
    tracemalloc.start()
    envs = [gymnasium.make("forager/SWE-v0", tasks=tasks, runtime="docker").unwrapped for _ in range(count)]
    failures: list[str] = []
    started = time.monotonic()

    def open_one(index: int) -> None:
        try:
            envs[index].reset(seed=index)
            out = envs[index].runtime.run("python -c 'import semverkit; print(1)'").output.strip()
            if out != "1":
                failures.append(f"env {index}: {out[-200:]}")
        except Exception as err:  # noqa: BLE001 - counted and shown
            failures.append(f"env {index}: {type(err).__name__}: {err}")

    with ThreadPoolExecutor(max_workers=16) as executor:
        list(executor.map(open_one, range(count)))
    open_s = time.monotonic() - started
    gc.collect()
    after_mb = process.memory_info().rss / 2**20
    held_mb = tracemalloc.get_traced_memory()[0] / 2**20  # what the open envs hold on Python's heap
    tracemalloc.stop()
    threads = threading.active_count()
    shims = [p for p in psutil.process_iter(["name", "memory_info"]) if (p.info["name"] or "").startswith("containerd-shim")]
    shim_mb = sum(p.info["memory_info"].rss for p in shims if p.info["memory_info"]) / 2**20 / max(len(shims), 1)
    usage = []
    for env in envs[: min(count, 16)]:  # the stats call takes about a second each: a sample is enough
        if env.runtime is not None:
            stats = env.runtime.container.stats(stream=False)
            memory = stats.get("memory_stats", {})
            usage.append((memory.get("usage", 0) - memory.get("stats", {}).get("inactive_file", 0)) / 2**20)
    for env in envs:
        env.close()
    reaper.drain()
    left = len(ours(client))
    return {"envs_concurrent": count - len(failures), "env_failures": failures[:5], "open_s": round(open_s, 1),
            "host_mb_per_env": round(max(held_mb, after_mb - before_mb) / count, 2),
            "heap_mb_per_env": round(held_mb / count, 3), "rss_mb_per_env": round((after_mb - before_mb) / count, 3),
            "host_mb_before": round(before_mb),
            "host_mb_after": round(after_mb), "threads_while_open": threads,
            "container_mb": round(statistics.median(usage), 1) if usage else None,
            "shim_mb_per_container": round(shim_mb, 1), "containers_left": left}


def grading_speed(tasks: list, client, repeats: int) -> dict:
    """grade_patch through a pool that prepared the grading container ahead, against `docker run` of pytest."""
    grade_s, raw_s = [], []
    with WarmPool(0, prepared_limit=4) as pool:
        for task in tasks:
            for _ in range(repeats):
                pool.expect(task.image, grading_preparation(task), workdir=task.workdir)
                while pool.stats()["warming"]:
                    time.sleep(0.05)  # as when the episode ran long enough for it
                reaper.drain()
                started = time.perf_counter()
                result = grade_patch(task, task.patch or "", lambda t: open_runtime(
                    t, "docker", pool=pool, preparation=grading_preparation(t)))
                grade_s.append(time.perf_counter() - started)
                assert result.resolved, (task.instance_id, result.error)
                reaper.drain()
                raw_s.append(direct_run_s(client, task))
        hits = pool.prepared_hits
    return {"grade_ms_p50": round(1000 * statistics.median(grade_s)), "raw_ms_p50": round(1000 * statistics.median(raw_s)),
            "grading_over_raw": round(sum(grade_s) / sum(raw_s), 2), "prepared_hits": hits, "gradings": len(grade_s)}


def distinct_tasks(tasks: list, count: int) -> list:
    """`count` tasks cycling through `tasks`, each with an id of its own (a collection runs an id once)."""
    return [tasks[i % len(tasks)].model_copy(update={"instance_id": f"{tasks[i % len(tasks)].instance_id}~{i}"})
            for i in range(count)]


def split_collection(tasks: list, workers: int, warm_pool: int, repeats: int) -> dict:
    """Episodes per minute of the reference policy with the workers on one endpoint, split over two (the local
    socket and a TCP proxy to the same engine), and all on the proxy, in turn `repeats` times; the best of each."""
    with DockerSocketProxy() as proxy:
        socket_url = f"unix://{proxy.socket_path}"  # named, so that every fleet takes the same path (a pool per host)
        fleets = {"one": [socket_url], "two": [socket_url, proxy.url], "proxy_only": [proxy.url]}
        rates: dict[str, list[float]] = {name: [] for name in fleets}
        resolved: dict[str, int] = {name: 0 for name in fleets}
        for _ in range(repeats):
            for name, hosts in fleets.items():
                with tempfile.TemporaryDirectory(prefix="forager-bench-split-") as out:
                    config = CollectConfig(workers=workers, runtime="docker", warm_pool=warm_pool, docker_hosts=hosts)
                    started = time.monotonic()
                    stats = collect(tasks, out, policy=PolicySpec(name="reference"), config=config)
                    rates[name].append(60 * stats.done / (time.monotonic() - started))
                    resolved[name] += stats.resolved
                reaper.drain()
        through_proxy = proxy.count("/containers/create")
    return {"workers": workers, "episodes": len(tasks), "warm_pool": warm_pool, "repeats": repeats,
            "one_endpoint": round(max(rates["one"]), 1), "two_endpoints": round(max(rates["two"]), 1),
            "proxy_only": round(max(rates["proxy_only"]), 1),
            "all_runs": {name: [round(r, 1) for r in runs] for name, runs in rates.items()},
            "resolved": resolved, "containers_through_proxy": through_proxy,
            "note": "both endpoints are this machine's engine: the proxy's overhead and the split, not capacity"}


SHARES = (("commands", "agent's commands", "#1f77b4"), ("tests", "graded tests", "#2ca02c"),
          ("reset", "reset", "#ff7f0e"), ("grading_setup", "grading set-up", "#9467bd"),
          ("steps_overhead", "step overhead", "#7f7f7f"), ("policy", "policy", "#d62728"))


def write_svg(path: Path, figures: dict) -> None:
    """Where the episodes' time went at each worker count (stacked bars) and the episodes per minute."""
    runs = figures.get("collect_runs", [])
    rows = [f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{110 + 34 * len(runs)}" '
            'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>',
            '<text x="10" y="20" font-size="14">Where episode time goes, by worker count (bench/fleet.py)</text>']
    for index, run in enumerate(runs):
        y, x = 40 + 34 * index, 90.0
        rows.append(f'<text x="10" y="{y + 16}">{run["workers"]} worker{"s" if run["workers"] > 1 else ""}</text>')
        for key, _, color in SHARES:
            width = 480 * run["time_share"].get(key, 0.0)
            rows.append(f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="22" fill="{color}"/>')
            x += width
        rows.append(f'<text x="585" y="{y + 16}">{run["episodes_per_minute"]} episodes/min</text>')
    y = 50 + 34 * len(runs)
    for index, (_, label, color) in enumerate(SHARES):
        rows.append(f'<rect x="{10 + 125 * index}" y="{y}" width="12" height="12" fill="{color}"/>'
                    f'<text x="{26 + 125 * index}" y="{y + 11}">{label}</text>')
    reset = figures.get("reset_p50_ms")
    if reset:
        rows.append(f'<text x="10" y="{y + 40}">reset p50: {reset["warm"]} ms with a warm pool, {reset["cold"]} ms '
                    f'without; bare docker run {figures["bare_docker_run_ms"]} ms</text>')
    path.write_text("\n".join(rows + ["</svg>"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resets", type=int, default=20)
    parser.add_argument("--think-s", type=float, default=1.5, help="seconds between resets (the agent's turns)")
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--episodes-per-worker", type=int, default=2)
    parser.add_argument("--grading-tasks", type=int, default=6)
    parser.add_argument("--split-workers", type=int, default=4, help="workers of the one-vs-two endpoint run")
    parser.add_argument("--split-repeats", type=int, default=2, help="rounds of one, two and proxy-only endpoints")
    parser.add_argument("--skip", nargs="*", default=[], choices=["reset", "envs", "collect", "grading", "split"])
    parser.add_argument("--svg", type=Path, default=Path("fleet.svg"), help="the picture of where the time goes")
    args = parser.parse_args()

    client = docker_client()
    image = build_sample_image(client, log=lambda m: None)
    tasks = sample_tasks(image)
    figures: dict = {"benchmark": "fleet", "cpus": psutil.cpu_count(), "tasks": len(tasks)}
    if "reset" not in args.skip:
        figures["bare_docker_run_ms"] = round(bare_docker_run_ms(client, image, 10))
        cold = reset_latency(tasks, max(5, args.resets // 2), args.think_s, None)
        with WarmPool(1) as pool:
            warm = reset_latency(tasks, args.resets, args.think_s, pool)
            figures["reset_pool_stats"] = pool.stats()
        figures.update(reset_p50_ms={"cold": round(statistics.median(cold)), "warm": round(statistics.median(warm))},
                       reset_p95_ms={"cold": round(percentile(cold, 0.95)), "warm": round(percentile(warm, 0.95))})
        print(f"reset p50: cold {figures['reset_p50_ms']['cold']} ms, warm {figures['reset_p50_ms']['warm']} ms "
              f"(p95 {figures['reset_p95_ms']['warm']} ms); bare docker run {figures['bare_docker_run_ms']} ms", flush=True)
    if "envs" not in args.skip:
        envs = concurrent_envs(tasks, args.envs, client)
        figures.update(envs)
        print(f"{envs['envs_concurrent']}/{args.envs} envs open at once in {envs['open_s']} s: "
              f"{envs['host_mb_per_env']} MB per env in this process, {envs['container_mb']} MB per container "
              f"(its cgroup) and {envs['shim_mb_per_container']} MB (its containerd shim) in the engine; {envs['containers_left']} containers left after closing", flush=True)
    if "collect" not in args.skip:
        mutate = sample_mutate_fix_tasks(32)
        runs = []
        for workers in args.workers:
            count = max(8, workers * args.episodes_per_worker)
            result = run_collection(distinct_tasks(mutate, count), workers, PolicySpec(name="reference"), 2, None)
            t = result["time_in_s"]
            total = t.get("total", 0.0) or 1.0
            where = {"policy": t.get("policy", 0), "reset": t.get("reset", 0), "commands": t.get("commands", 0),
                     "steps_overhead": t.get("env", 0) - t.get("commands", 0) - t.get("grade", 0),
                     "grading_setup": t.get("grade", 0) - t.get("tests", 0), "tests": t.get("tests", 0)}
            result["time_share"] = {k: round(v / total, 3) for k, v in where.items()}
            reaper.drain()
            result["containers_left"] = len(ours(client))
            runs.append(result)
            print(f"{workers:3d} workers: {result['episodes']} episodes, {result['episodes_per_minute']}/min, "
                  f"{result['resolved']} resolved, {result['containers_left']} containers left, time: "
                  + ", ".join(f"{k} {v:.0%}" for k, v in result["time_share"].items()),
                  flush=True)
        figures["episodes_per_min"] = {str(r["workers"]): r["episodes_per_minute"] for r in runs}
        figures["collect_runs"] = runs
    if "grading" not in args.skip:
        grading = grading_speed(sample_mutate_fix_tasks(32)[: args.grading_tasks], client, 2)
        figures.update(grading)
        print(f"grading p50 {grading['grade_ms_p50']} ms against docker run {grading['raw_ms_p50']} ms: "
              f"{grading['grading_over_raw']}x", flush=True)
    if "split" not in args.skip:
        mutate = sample_mutate_fix_tasks(32)
        count = max(8, 2 * args.split_workers)
        split = split_collection(distinct_tasks(mutate, count), args.split_workers, 0, args.split_repeats)
        figures["split_episodes_per_min"] = {key: split[key] for key in ("one_endpoint", "two_endpoints", "proxy_only")}
        figures["split_run"] = split
        print(f"{args.split_workers} workers over one Docker endpoint: {split['one_endpoint']} episodes/min; split over "
              f"two (the socket and a TCP proxy to the same engine): {split['two_endpoints']}/min; all through the "
              f"proxy: {split['proxy_only']}/min ({split['containers_through_proxy']} containers through it)", flush=True)
    if "collect" not in args.skip:
        write_svg(args.svg, figures)
        print(f"where the time goes: {args.svg}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
