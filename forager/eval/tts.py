"""Test-time scaling as CWM did it: of N candidate patches, submit the one that passes most generated tests.

For each instance, N candidates (the agent's patches, one per sample) and N reproduction tests (the
test-generation environment's episodes on the same instance, `forager/SWE-TestGen-v0`). Every
candidate is scored against every test with that environment's own grader: the test must fail on the
instance's code and pass with the candidate, both in fresh containers. A test that reproduces nothing
fails on no code and so scores no candidate. The candidate with the highest score is submitted; ties go
to the patch most candidates agree on (the same changed lines), then to the earliest sample. Nothing
hidden is used: neither the instance's test patch nor its FAIL_TO_PASS tests.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from forager.core import ForagerError, Task

TESTGEN_ENV = "forager/SWE-TestGen-v0"


@dataclass
class Selection:
    """What test-time scaling chose for one instance, and why."""

    instance_id: str
    chosen: int | None
    """The sample index submitted (None: no candidate had a patch)."""
    scores: list[int] = field(default_factory=list)
    """Per candidate: the generated tests it passes (that also fail on the instance's code)."""
    tests: int = 0
    reproducing_tests: int = 0
    """Generated tests that passed with at least one candidate (so they fail on the code and test something)."""


def changed_lines(patch: str) -> str:
    """A patch's added and removed lines, whitespace collapsed: candidates that agree compare equal."""
    return "\n".join(re.sub(r"\s+", " ", line).strip() for line in patch.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def choose(candidates: Sequence[str], scores: Sequence[int]) -> int | None:
    """The index to submit: the best score, then the majority patch, then the earliest; None when all are empty."""
    usable = [i for i, patch in enumerate(candidates) if patch.strip()]
    if not usable:
        return None
    best = max(scores[i] for i in usable)
    tied = [i for i in usable if scores[i] == best]
    votes = Counter(changed_lines(candidates[i]) for i in usable)
    return max(tied, key=lambda i: (votes[changed_lines(candidates[i])], -i))


def select(task: Task, candidates: Sequence[str], tests: Sequence[str], env: Any, workers: int = 2) -> Selection:
    """Score every candidate against every generated test with `env` (the test-generation env), then choose."""
    pairs = [(c, t) for c, patch in enumerate(candidates) if patch.strip() for t, test in enumerate(tests) if test.strip()]
    generation = env.prepare_tasks([task], env.runtime_kind)[0]  # its start tree, made once

    def passes(pair: tuple[int, int]) -> bool:
        candidate, test = pair
        return env.grade_task(generation.model_copy(update={"patch": candidates[candidate]}), tests[test]).resolved

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="forager-tts") as pool:
        outcomes = dict(zip(pairs, pool.map(passes, pairs)))
    scores = [sum(outcomes.get((c, t), False) for t in range(len(tests))) for c in range(len(candidates))]
    reproducing = sum(any(outcomes.get((c, t), False) for c in range(len(candidates))) for t in range(len(tests)))
    return Selection(task.instance_id, choose(candidates, scores), scores, len(tests), reproducing)


def testgen_env(runtime: str = "docker") -> Any:
    """The test-generation environment that scores candidates (a plug-in, found by its id like any other)."""
    from forager.agent.text_envs import swe_env_class

    cls = swe_env_class(TESTGEN_ENV)
    if cls is None:
        raise ForagerError(f"{TESTGEN_ENV} is not a SWE environment here: reinstall Forager (it ships in envs/)")
    return cls(tasks=[], runtime=runtime, repeats=1)


def select_all(tasks: dict[str, Task], candidates: dict[str, list[str]], tests: dict[str, list[str]],
               workers: int = 2, on_selection: Callable[[Selection], None] | None = None) -> list[Selection]:
    """A selection per instance that has candidates."""
    env = testgen_env()
    selections = []
    try:
        for instance_id, patches in candidates.items():
            if instance_id not in tasks:
                continue
            selection = select(tasks[instance_id], patches, tests.get(instance_id, []), env, workers)
            selections.append(selection)
            if on_selection:
                on_selection(selection)
    finally:
        env.close()
    return selections


__all__ = ["TESTGEN_ENV", "Selection", "changed_lines", "choose", "select", "select_all", "testgen_env"]
