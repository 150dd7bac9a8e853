"""Which bugs mutate-fix generation tries: the target functions the coverage run found, and the
candidate mutations in them, each with the tests that can notice it.

A function is a target only if passing tests execute it. A candidate's tests are those that execute
the changed lines (a test that never runs a line cannot see it change) or, when the change reaches
callers or the module (a signature, an import, a renamed variable), every test covering the function.
When nothing is left to try, `why_no_target` says why.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from forager.harness import PROTECTED_PATHS, CoverageMap, is_protected
from forager.runtime.base import ShellRuntime
from forager.tasks.mutate import FunctionInfo, Mutation, enumerate_mutations, find_functions

NOT_SOURCES = PROTECTED_PATHS + ("setup.py", "docs/*", "doc/*", "examples/*", "benchmarks/*", "bench/*")


@dataclass
class Target:
    path: str
    source: str
    functions: dict[str, FunctionInfo]
    covering: dict[str, set[str]]
    """Function qualname -> passing tests that execute it."""


@dataclass
class Candidate:
    path: str
    mutation: Mutation
    tests: list[str]
    """What validation runs: the tests that can notice the change."""
    covering: list[str]
    """Every passing test that covers the function(s): the rest of them stay PASS_TO_PASS untouched."""


# Changes that act beyond the lines they touch: on every caller, or at import time.
_WHOLE_FUNCTION_OPERATORS = frozenset({"remove_parameter", "remove_import", "swap_variables"})


def source_files(runtime: ShellRuntime) -> list[str]:
    """The repository's tracked Python files that are not tests, docs or packaging."""
    return [f for f in runtime.run_checked("git ls-files -- '*.py'").split() if not is_protected(f, NOT_SOURCES)]


def why_no_target(files: list[str], coverage: CoverageMap, passing: int) -> str:
    """Why the coverage run left nothing to mutate, and what to try."""
    if not files:
        return "the repository tracks no Python source outside tests, docs and packaging: nothing to mutate"
    if not coverage.files:
        return (f"coverage saw no line of the project's source ({passing} tests pass): the tests may run the "
                "code in subprocesses, or a plugin may replace Forager's coverage; run the suite by hand in the image")
    seen = sorted(coverage.files)
    if not set(seen) & set(files):
        return (f"coverage saw only files outside the repository's tracked sources ({_some(seen)}): no module "
                f"of {_some(files)} ran; do the tests import an installed copy of the project, not the work tree?")
    return (f"no function of {', '.join(sorted(set(seen) & set(files))[:5])} is run by a passing test (coverage saw "
            "only module-level lines)")


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def find_targets(runtime: ShellRuntime, files: list[str], coverage: CoverageMap, passing: set[str]) -> list[Target]:
    targets = []
    for path in sorted(files):
        if path not in coverage.files:
            continue
        source = runtime.read_file(path)
        try:
            functions = {f.qualname: f for f in find_functions(source)}
        except SyntaxError:
            continue  # not Python this host can parse (a newer grammar, a template): skip the file
        covering = {}
        for name, fn in functions.items():
            tests = coverage.tests_for(path, fn.body_lineno, fn.end_lineno) & passing
            if tests:
                covering[name] = tests
        if covering:
            targets.append(Target(path, source, functions, covering))
    return targets


def find_candidates(
    targets: list[Target], coverage: CoverageMap, passing: set[str], operators: tuple[str, ...],
    rng: random.Random,
) -> Iterator[Candidate]:
    """Every candidate, shuffled within each operator and interleaved across operators."""
    by_operator: dict[str, list[Candidate]] = defaultdict(list)
    for target in targets:
        try:
            mutations = enumerate_mutations(target.source, operators)
        except SyntaxError:
            continue
        for mutation in mutations:
            uses = mutation.uses or (mutation.function,)
            covering = set().union(*(target.covering.get(f, set()) for f in uses))
            if not covering:
                continue
            tests = covering
            function = target.functions.get(mutation.function)
            if (mutation.operator not in _WHOLE_FUNCTION_OPERATORS and function is not None
                    and mutation.start_line >= function.body_lineno):
                tests = coverage.tests_for(target.path, mutation.start_line, mutation.end_line) & passing or covering
            by_operator[mutation.operator].append(Candidate(target.path, mutation, sorted(tests), sorted(covering)))
    queues = []
    for operator in operators:
        pool = by_operator.get(operator, [])
        rng.shuffle(pool)
        queues.append(iter(pool))
    while queues:
        for queue in list(queues):
            candidate = next(queue, None)
            if candidate is None:
                queues.remove(queue)
            else:
                yield candidate
