"""Mutate-fix task generation: plant a bug with an AST operator, keep it if the tests notice.

As CWM did, and then some:

1. Run the repository's suite once with per-test coverage. A function is a target only if tests that
   pass execute it.
2. Enumerate candidate bugs in the targets (`forager.tasks.mutate`), interleaved across operators
   and capped per function, so a small budget still covers many operators and functions.
3. Validate each candidate through a pytest fork server, running only the tests that can notice it:
   those that execute the changed lines (a test that never runs a line cannot see it change), or,
   when the change reaches callers or the module (a signature, an import, a renamed variable), every
   test that covers the function. FAIL_TO_PASS are the tests that now fail; PASS_TO_PASS the other
   tests covering the function (plus an optional sample of the rest). A candidate with no
   FAIL_TO_PASS is dropped, as are duplicates and, when asked, bugs that break the import.
4. The problem statement says what a user would see (which tests fail and how), never the mutation.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from forager.core import DEFAULT_TEST_COMMAND, ForagerError, Task
from forager.harness import CoverageMap, PytestHarness, TestRun
from forager.rewards.grading import PROTECTED_PATHS, is_protected
from forager.runtime.base import ShellRuntime, q
from forager.tasks.mutate import OPERATORS, FunctionInfo, Mutation, enumerate_mutations, find_functions

NOT_SOURCES = PROTECTED_PATHS + ("setup.py", "docs/*", "doc/*", "examples/*", "benchmarks/*", "bench/*")


@dataclass
class MutateConfig:
    max_tasks: int = 50
    operators: tuple[str, ...] = OPERATORS
    seed: int = 0
    max_per_function: int = 2
    """At most this many tasks per target function (breadth over depth)."""
    extra_pass_to_pass: int = 0
    """Also run this many randomly chosen passing tests that do not cover the function, as PASS_TO_PASS."""
    drop_import_errors: bool = False
    """Drop bugs that make the tests fail to collect (the package no longer imports)."""
    test_timeout: float = 120.0
    max_candidates: int | None = None
    """Stop after trying this many candidates (default: as many as it takes)."""
    workers: int = 1
    """Containers validating in parallel."""


@dataclass
class OperatorStats:
    tried: int = 0
    valid: int = 0
    no_failing_test: int = 0
    import_error: int = 0
    timed_out: int = 0

    @property
    def yield_(self) -> float:
        return self.valid / self.tried if self.tried else 0.0


@dataclass
class MutationContext:
    """What a problem-statement writer may use: what the user sees, and (for an LLM) the bug itself."""

    repo: str
    failing: list[str]
    messages: dict[str, str]
    mutation: Mutation
    path: str


@dataclass
class MutateReport:
    tasks: list[Task] = field(default_factory=list)
    stats: dict[str, OperatorStats] = field(default_factory=dict)
    tests_total: int = 0
    tests_passing: int = 0
    target_functions: int = 0
    candidates: int = 0
    coverage_s: float = 0.0
    validation_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    """Workers that failed while others went on (their candidates are lost, not the tasks found)."""
    timings: list[dict[str, float]] = field(default_factory=list)
    """Per validated candidate: `selected_s` (its covering tests), and `whole_s` when measured."""

    def summary(self) -> dict[str, object]:
        return {
            "tasks": len(self.tasks), "candidates_tried": sum(s.tried for s in self.stats.values()),
            "tests_total": self.tests_total, "tests_passing": self.tests_passing,
            "target_functions": self.target_functions, "coverage_s": round(self.coverage_s, 2),
            "validation_s": round(self.validation_s, 2),
            "per_operator": {op: {**asdict(s), "yield": round(s.yield_, 3)} for op, s in sorted(self.stats.items())},
        }


ProblemStatement = Callable[[MutationContext], str]


def default_problem_statement(ctx: MutationContext) -> str:
    """A bug report built from the failing tests and their errors; it never describes the change."""
    shown = ctx.failing[:10]
    lines = [f"{len(ctx.failing)} test{'s' if len(ctx.failing) != 1 else ''} of {ctx.repo} started failing:", ""]
    lines += [f"- `{t}`" for t in shown]
    if len(ctx.failing) > len(shown):
        lines.append(f"- ... and {len(ctx.failing) - len(shown)} more")
    first = next((t for t in ctx.failing if ctx.messages.get(t)), None)
    if first:
        lines += ["", f"Running `{first}` fails with:", "", "```", error_excerpt(ctx.messages[first]), "```"]
    lines += ["", "These tests passed before. Find the bug in the library code and fix it; do not change the tests."]
    return "\n".join(lines) + "\n"


def error_excerpt(report: str, max_lines: int = 12) -> str:
    """The `E` lines of a pytest failure (what went wrong, not the code around it) and its location."""
    lines = report.splitlines()
    errors = [line for line in lines if line.startswith("E ")]
    where = [line for line in lines if re.match(r"^\S+\.py:\d+: \w+", line)]
    picked = errors[:max_lines] + where[-1:] if errors else lines[:1] + lines[-max_lines:]
    return "\n".join(dict.fromkeys(picked)).strip() or "(no error text)"


# -- the pipeline -------------------------------------------------------------------------------------
@dataclass
class _Target:
    path: str
    source: str
    functions: dict[str, FunctionInfo]
    covering: dict[str, set[str]]
    """Function qualname -> passing tests that execute it."""


@dataclass
class _Candidate:
    path: str
    mutation: Mutation
    tests: list[str]
    """What validation runs: the tests that can notice the change."""
    covering: list[str]
    """Every passing test that covers the function(s): the rest of them stay PASS_TO_PASS untouched."""


# Changes that act beyond the lines they touch: on every caller, or at import time.
_WHOLE_FUNCTION_OPERATORS = frozenset({"remove_parameter", "remove_import", "swap_variables"})


def generate_mutate_fix_tasks(
    open_runtime: Callable[[], ShellRuntime],
    *,
    image: str | None,
    repo: str,
    config: MutateConfig | None = None,
    test_command: str = DEFAULT_TEST_COMMAND,
    problem_statement: ProblemStatement = default_problem_statement,
    on_event: Callable[[str, MutateReport], None] | None = None,
    measure_whole_suite: bool = False,
) -> MutateReport:
    """Validated mutate-fix tasks for the repository that `open_runtime()` opens (an image's /repo).

    `on_event(kind, report)` is called with "coverage" once the baseline ran, then "tried" or
    "valid" per candidate. With `measure_whole_suite`, each valid candidate's whole-suite run is
    timed too (what the benchmark compares against).
    """
    config = config or MutateConfig()
    unknown = set(config.operators) - set(OPERATORS)
    if unknown:
        raise ForagerError(f"unknown operators {sorted(unknown)}; choose from {', '.join(OPERATORS)}")
    report = MutateReport(stats={op: OperatorStats() for op in config.operators})
    notify = on_event or (lambda kind, report: None)
    rng = random.Random(config.seed)

    with open_runtime() as runtime:
        base_commit = runtime.run_checked("git rev-parse HEAD").strip()
        if runtime.run_checked("git status --porcelain --untracked-files=no").strip():
            raise ForagerError("the repository in the image has uncommitted changes; commit them first")
        harness = PytestHarness(runtime, test_command)
        started = time.monotonic()
        baseline, coverage = harness.coverage(timeout=max(config.test_timeout, 1800))
        report.coverage_s = time.monotonic() - started
        passing = {t for t, s in baseline.statuses.items() if s == "PASSED"}
        report.tests_total, report.tests_passing = len(baseline.statuses), len(passing)
        if not passing:
            raise ForagerError(f"no test passes in the repository; pytest said:\n{baseline.log[-3000:]}")
        targets = _targets(runtime, coverage, passing)
        report.target_functions = sum(len(t.covering) for t in targets)
        candidates = list(_candidates(targets, coverage, passing, config, rng))
        report.candidates = len(candidates)
        notify("coverage", report)

    all_passing = sorted(passing)
    queue = iter(candidates)
    lock = threading.Lock()
    seen: set[str] = set()
    per_function: Counter[tuple[str, str]] = Counter()
    tried = 0

    def next_candidate() -> _Candidate | None:
        nonlocal tried
        with lock:
            while len(report.tasks) < config.max_tasks and (config.max_candidates is None or tried < config.max_candidates):
                candidate = next(queue, None)
                if candidate is None:
                    return None
                key = (candidate.path, candidate.mutation.function)
                if per_function[key] >= config.max_per_function:
                    continue
                tried += 1
                return candidate
            return None

    def work() -> None:
        with open_runtime() as runtime:
            harness = PytestHarness(runtime, test_command)
            harness.serve()
            while (candidate := next_candidate()) is not None:
                extra = []
                if config.extra_pass_to_pass:
                    rest = [t for t in all_passing if t not in set(candidate.covering)]
                    extra = random.Random(f"{config.seed}:{candidate.mutation.source}").sample(
                        rest, min(config.extra_pass_to_pass, len(rest)))
                outcome = _validate(runtime, harness, candidate, extra, config, measure_whole_suite, all_passing)
                stats = report.stats[candidate.mutation.operator]
                with lock:
                    stats.tried += 1
                    if outcome is None:
                        stats.timed_out += 1
                        notify("tried", report)
                        continue
                    run, setup_patch, fix, timing = outcome
                    failing = [t for t in candidate.tests + extra if not run.passed(t)]
                    import_error = bool(failing) and all(run.status(t) in ("MISSING", "ERROR") for t in failing)
                    digest = hashlib.sha256(f"{candidate.path}\0{candidate.mutation.source}".encode()).hexdigest()
                    if not failing or digest in seen or len(report.tasks) >= config.max_tasks:
                        stats.no_failing_test += not failing
                        notify("tried", report)
                        continue
                    if import_error:
                        stats.import_error += 1
                        if config.drop_import_errors:
                            notify("tried", report)
                            continue
                    seen.add(digest)
                    per_function[(candidate.path, candidate.mutation.function)] += 1
                    stats.valid += 1
                    report.timings.append(timing)
                    ctx = MutationContext(repo, failing, run.messages, candidate.mutation, candidate.path)
                    report.tasks.append(_task(
                        ctx, digest, image, base_commit, runtime.workdir, setup_patch, fix, test_command,
                        _pass_to_pass(candidate, extra, run), import_error, problem_statement,
                    ))
                    notify("valid", report)

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as err:  # noqa: BLE001 - reported below, in the caller's thread
            errors.append(err)

    started = time.monotonic()
    threads = [threading.Thread(target=guarded, name=f"forager-mutate-{i}") for i in range(max(1, config.workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.validation_s = time.monotonic() - started
    if errors and not report.tasks:
        raise errors[0]
    report.errors = [f"{type(e).__name__}: {e}" for e in errors]
    report.tasks.sort(key=lambda t: t.instance_id)
    return report


def _targets(runtime: ShellRuntime, coverage: CoverageMap, passing: set[str]) -> list[_Target]:
    files = [f for f in runtime.run_checked("git ls-files -- '*.py'").split() if not is_protected(f, NOT_SOURCES)]
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
            targets.append(_Target(path, source, functions, covering))
    return targets


def _candidates(
    targets: list[_Target], coverage: CoverageMap, passing: set[str], config: MutateConfig, rng: random.Random,
) -> Iterator[_Candidate]:
    """Every candidate, shuffled within each operator and interleaved across operators."""
    by_operator: dict[str, list[_Candidate]] = defaultdict(list)
    for target in targets:
        try:
            mutations = enumerate_mutations(target.source, config.operators)
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
            by_operator[mutation.operator].append(_Candidate(target.path, mutation, sorted(tests), sorted(covering)))
    queues = []
    for operator in config.operators:
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


def _pass_to_pass(candidate: _Candidate, extra: list[str], run: TestRun) -> list[str]:
    """Tests that ran and passed, and the covering tests that did not need to run (they cannot fail)."""
    ran = set(candidate.tests) | set(extra)
    unaffected = [t for t in candidate.covering if t not in ran]
    return [t for t in candidate.tests if run.passed(t)] + unaffected + [t for t in extra if run.passed(t)]


def _validate(
    runtime: ShellRuntime, harness: PytestHarness, candidate: _Candidate, extra: list[str], config: MutateConfig,
    measure_whole_suite: bool, all_tests: list[str],
) -> tuple[TestRun, str, str, dict[str, float]] | None:
    """Run the candidate's tests on the mutated file; (run, setup patch, fix, timing), None on a timeout."""
    path = candidate.path
    original = runtime.read_file(path)
    runtime.write_file(path, candidate.mutation.source)
    try:
        run = harness.run(candidate.tests + extra, config.test_timeout)
        if run.timed_out:
            return None
        timing = {"selected_s": run.duration_s, "selected_tests": float(len(candidate.tests) + len(extra))}
        if measure_whole_suite and any(not run.passed(t) for t in candidate.tests + extra):
            timing["whole_s"] = harness.run(all_tests, config.test_timeout * 10).duration_s
        setup_patch = runtime.run_checked(f"git diff -- {q(path)}")
        fix = runtime.run_checked(f"git diff -R -- {q(path)}")
        return run, setup_patch, fix, timing
    finally:
        runtime.write_file(path, original)


def _task(
    ctx: MutationContext, digest: str, image: str | None, base_commit: str, workdir: str, setup_patch: str,
    fix: str, test_command: str, pass_to_pass: list[str], import_error: bool, problem_statement: ProblemStatement,
) -> Task:
    m = ctx.mutation
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{ctx.repo.split('/')[-1]}__{m.operator}__{m.function}")
    return Task(
        instance_id=f"{slug}__{digest[:8]}",
        kind="mutate-fix",
        repo=ctx.repo,
        image=image,
        base_commit=base_commit,
        workdir=workdir,
        problem_statement=problem_statement(ctx),
        setup_patch=setup_patch,
        patch=fix,
        test_command=test_command,
        FAIL_TO_PASS=ctx.failing,
        PASS_TO_PASS=pass_to_pass,
        metadata={
            "operator": m.operator, "function": m.function, "file": ctx.path, "lines": [m.start_line, m.end_line],
            "description": m.description, "import_error": import_error, "difficulty": _difficulty(ctx, fix),
        },
    )


def _difficulty(ctx: MutationContext, fix: str) -> str:
    """A rough guess from the size of the fix and how many tests notice: easy, medium or hard."""
    changed = sum(1 for line in fix.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    if changed <= 2 and len(ctx.failing) >= 3:
        return "easy"
    return "hard" if changed > 6 or ctx.mutation.operator == "remove_body" else "medium"
