"""Training rollout throughput: the scripted engine through RolloutWorkers and the buffer, on the local runtime.

    python bench/train_rollout.py [--concurrency 1 2 4] [--seconds 30] [--group-size 2] [--staleness 4]

The sample repository's tasks, the reference fix in toy tokens (`forager.testing.scripted_engine`: no model,
so the figure is Forager's side of a rollout: env reset, tool calls, grading, the store, the buffer) with
every second episode of a task submitting at once. The learner's side takes batches as they fill (no step,
a version bump each): asynchronous with `--staleness` > 0, synchronous (the gate closes at each batch) with
0. Reported per concurrency: episodes finished in the window per second, the mean episode's seconds, the
share of the slots' time spent inside episodes (the rest is the rollout's own overhead and waiting for
admission), batches, and the share that resolved. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from forager.agent.config import CollectConfig
from forager.images.sample import sample_tasks
from forager.testing.scripted_engine import ScriptedEngine
from forager.train.buffer import RolloutBuffer
from forager.train.rollout import RolloutWorkers
from forager.trajectories.store import read_trajectories


def run(concurrency: int, seconds: float, group_size: int, staleness: int) -> dict:
    engine = ScriptedEngine()
    buffer = RolloutBuffer(group_size=group_size, tokens_per_batch=1, max_staleness=staleness,
                           max_buffered_groups=max(2, concurrency))
    batches = 0
    with tempfile.TemporaryDirectory(prefix="forager-bench-rollout-") as tmp:
        workers = RolloutWorkers(sample_tasks(None), buffer, Path(tmp) / "run", engine=engine,
                                 collect=CollectConfig(runtime="local"), concurrency=concurrency)
        started = time.monotonic()
        with workers:
            while time.monotonic() - started < seconds:
                batch = buffer.take_batch(engine.version, timeout=max(0.1, seconds - (time.monotonic() - started)))
                if batch is None:
                    continue
                batches += 1
                engine.update_weights(None, engine.version + 1)  # a "step": the next batch is another version
                buffer.resume()
            wall = time.monotonic() - started
        workers.check()
        finished = [t for t in read_trajectories([Path(tmp) / "run"]) if t.finished_at <= stopped_at(started, wall)]
    episodes = len(finished)
    busy = sum(t.timings["total"] for t in finished)
    return {"concurrency": concurrency, "group_size": group_size, "max_staleness": staleness,
            "wall_s": round(wall, 2), "batches": batches, "episodes": episodes,
            "episodes_per_s": round(episodes / wall, 3), "episode_s_mean": round(busy / max(episodes, 1), 2),
            "slot_busy_share": round(busy / (wall * concurrency), 3),
            "resolved_share": round(sum(t.resolved for t in finished) / max(episodes, 1), 3)}


def stopped_at(started: float, wall: float) -> str:
    """The wall-clock time (as trajectories write it) when the measured window ended."""
    end = datetime.now(timezone.utc) - timedelta(seconds=time.monotonic() - started - wall)
    return end.isoformat(timespec="milliseconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--staleness", type=int, default=4)
    args = parser.parse_args()
    results = []
    for concurrency in args.concurrency:
        result = run(concurrency, args.seconds, args.group_size, args.staleness)
        print(f"concurrency {concurrency}: {result['episodes_per_s']} episodes/s, {result['batches']} batches")
        results.append(result)
    print(json.dumps({"bench": "train_rollout", "runtime": "local", "results": results}))


if __name__ == "__main__":
    main()
