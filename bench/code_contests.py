"""code-contests throughput: episodes per minute, and the share of episode time spent in the sandbox.

    python bench/code_contests.py [--workers 1 4] [--episodes 32] [--mode multi single]

A scripted policy behind a real HTTP server (forager.testing) answers each problem with its
reference solution: multi-turn, it first runs it on the public examples, then submits it; single-
turn, it submits at once. Every judgement is a fresh container from the env's warm pool. Also
checks that every reference solution resolves its problem. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from forager.agent.collect import CollectConfig, collect
from forager.policies.spec import PolicySpec
from forager.testing import OpenAIServer
from forager.testing.openai_server import assistant_turns, by_conversation
from forager.trajectories.store import read_trajectories
from forager_envs.code_contests import load_problems

IDS = {"multi": "forager/CodeContests-v0", "single": "forager/CodeContests-SingleTurn-v0"}


def responder(mode: str):
    problems = load_problems()

    def reply(messages: list[dict]) -> str:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        problem = next(p for p in problems.values() if prompt.startswith(p["title"] + "\n"))
        submit = mode == "single" or assistant_turns(messages) >= 1
        return f"{'SUBMIT ' if submit else ''}my program:\n```python\n{problem['solution']}```\n"

    return by_conversation(reply)


def run(mode: str, workers: int, episodes: int) -> dict:
    task_ids = sorted(load_problems())
    samples = -(-episodes // len(task_ids))  # every problem once, more than once only past the set's size
    with OpenAIServer(responder(mode)) as server, tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        stats = collect(task_ids[:episodes], out,
                        policy=PolicySpec(name="openai", options={"base_url": server.base_url, "model": "toy-model"}),
                        config=CollectConfig(env_id=IDS[mode], workers=workers, samples_per_task=samples))
        wall = time.monotonic() - started
        trajectories = read_trajectories([out])
    sandbox = sum(t.reward_details.get("sandbox_s", 0.0) for t in trajectories)
    total = sum(t.timings.get("total", 0.0) for t in trajectories)
    return {"mode": mode, "workers": workers, "episodes": stats.done, "resolved": stats.resolved,
            "episodes_per_min": round(60 * stats.done / wall, 1), "sandbox_share": round(sandbox / total, 3),
            "wall_s": round(wall, 1), "unresolved": stats.unresolved[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--mode", nargs="+", default=["multi", "single"], choices=sorted(IDS))
    args = parser.parse_args()
    results = []
    for mode in args.mode:
        for workers in args.workers:
            result = run(mode, workers, args.episodes)
            results.append(result)
            print(f"{mode}-turn, {workers} worker(s): {result['episodes']} episodes, {result['resolved']} resolved, "
                  f"{result['episodes_per_min']}/min, {result['sandbox_share']:.0%} of episode time in the sandbox",
                  flush=True)
    print(json.dumps({"benchmark": "code_contests", "problems": len(load_problems()), "runs": results}))


if __name__ == "__main__":
    main()
