"""Fuzz SWEEnv.step with generated actions, and time the parser on 1 MiB of adversarial text.

    python bench/fuzz.py [--actions 10000] [--runtime local|docker] [--seed N] [--parse-only]

The actions are forager/testing/fuzz.py's (every tool, both formats, directories, devices, FIFOs,
huge files, surrogates, deep nesting, ...), stepped through one env on the sample task with a stub
grader. Prints the slowest steps and parse times, then one JSON line: actions, actions_per_s
(stepping only), wall_s, exceptions, oversized_observations, env_errors, slowest_step_s, resets,
parse_1mib_s (the slowest input) and parse_1mib_by_input. Targets: no exceptions, no oversized
observations, parse_1mib_s well under 1.
"""

from __future__ import annotations

import argparse
import json
import time

from forager.envs.actions import ActionError
from forager.envs.tools import parse_action

MIB = 1 << 20

ADVERSARIAL = {
    "unclosed_tags": "<tool: bash>x",
    "unclosed_hermes": "<tool_call>{",
    "json_starts": '{"',
    "list_of_dict_starts": "[{",
    "open_objects": '{"a": ',
    "tag_whitespace": "<tool:" + " " * 64,
    "search_markers": "<<<<<<< SEARCH\n",
    "unclosed_nested_lists": None,  # below: 16 starts, then 1 MiB of [1], never closed
    "deep_json_call": None,
}


def adversarial_text(name: str) -> str:
    if name == "unclosed_nested_lists":
        return ('[{"a": ' * 16 + "[" + "[1]," * MIB)[:MIB]
    if name == "deep_json_call":
        depth = (MIB - 40) // 2
        return '{"name": "bash", "arguments": ' + "[" * depth + "]" * depth + "}"
    unit = ADVERSARIAL[name]
    assert unit is not None
    return (unit * (MIB // len(unit) + 1))[:MIB]


def time_parsing(repeat: int = 3) -> dict[str, float]:
    """Per input, the best of `repeat` parses of 1 MiB (each must end in an ActionError)."""
    times = {}
    for name in ADVERSARIAL:
        text = adversarial_text(name)
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            try:
                parse_action(text)
            except ActionError:
                pass
            best = min(best, time.perf_counter() - started)
        times[name] = round(best, 4)
    return times


def fuzz(actions: int, runtime: str, seed: int | None, batch: int = 20) -> dict[str, object]:
    import gymnasium
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    import forager.envs  # noqa: F401 - registers forager/SWE-v0
    from forager.testing.fuzz import FuzzStats, action_strategy, prepare, step_all

    env = gymnasium.make("forager/SWE-v0", runtime=runtime, max_turns=10**9, command_timeout=5).unwrapped
    stats = FuzzStats()
    started = time.perf_counter()
    try:
        prepare(env)

        @settings(max_examples=max(1, actions // batch), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(action_strategy(docker=runtime == "docker"), min_size=batch, max_size=batch))
        def run(batch_of_actions: list[object]) -> None:
            step_all(env, batch_of_actions, stats)

        if seed is not None:
            run = hypothesis_seed(seed)(run)
        run()
    finally:
        env.close()
    for took, action in stats.slowest:
        print(f"slow step {took:6.3f}s  {action[:120]}")
    for line in stats.exceptions[:10] + stats.oversized[:10] + stats.env_errors[:10]:
        print("FINDING", line)
    print("outcomes", dict(sorted(stats.outcomes.items())))
    return {
        "runtime": runtime,
        "actions": stats.actions,
        "actions_per_s": round(stats.actions_per_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "exceptions": len(stats.exceptions),
        "oversized_observations": len(stats.oversized),
        "env_errors": len(stats.env_errors),
        "slowest_step_s": round(stats.slowest_s, 3),
        "resets": stats.resets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=10_000)
    parser.add_argument("--runtime", choices=["local", "docker"], default="local")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    parser.add_argument("--parse-only", action="store_true", help="only time the parser")
    args = parser.parse_args()

    parse_times = time_parsing()
    for name, seconds in parse_times.items():
        print(f"parse 1 MiB {name:24} {seconds * 1000:8.1f} ms")
    result = {} if args.parse_only else fuzz(args.actions, args.runtime, args.seed)
    result.update(parse_1mib_s=max(parse_times.values()), parse_1mib_by_input=parse_times)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
