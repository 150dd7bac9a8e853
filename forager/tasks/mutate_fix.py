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

import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from forager.core import DEFAULT_TEST_COMMAND, ForagerError, Task
from forager.files import content_digest
from forager.harness import PROTECTED_PATHS, CoverageMap, PytestHarness, TestRun, is_protected
from forager.runtime.base import ShellRuntime, bash_quote
from forager.tasks.mutate import OPERATORS, FunctionInfo, Mutation, enumerate_mutations, find_functions
from forager.tasks.statements import MutationContext, ProblemStatement, default_problem_statement
from forager.workers import run_workers

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
    base_commit, passing, candidates = _baseline(open_runtime, test_command, config, report)
    notify("coverage", report)
    validation = _Validation(open_runtime, test_command, config, report, notify, candidates, sorted(passing),
                             image=image, repo=repo, base_commit=base_commit, problem_statement=problem_statement,
                             measure_whole_suite=measure_whole_suite)
    started = time.monotonic()
    errors = run_workers(validation.work, max(1, config.workers), "forager-mutate")  # one failing worker leaves the rest going
    report.validation_s = time.monotonic() - started
    if errors and not report.tasks:
        raise errors[0]
    report.errors = [f"{type(e).__name__}: {e}" for e in errors]
    report.tasks.sort(key=lambda t: t.instance_id)
    return report


def _baseline(open_runtime: Callable[[], ShellRuntime], test_command: str, config: MutateConfig,
              report: MutateReport) -> tuple[str, set[str], list[_Candidate]]:
    """One coverage run of the suite: the base commit, the passing tests and the candidates to try, in order."""
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
        candidates = list(_candidates(targets, coverage, passing, config, random.Random(config.seed)))
        report.candidates = len(candidates)
    return base_commit, passing, candidates


class _Validation:
    """Workers take candidates in order, each in its own container, and keep the bugs that fail a test."""

    def __init__(self, open_runtime: Callable[[], ShellRuntime], test_command: str, config: MutateConfig,
                 report: MutateReport, notify: Callable[[str, MutateReport], None], candidates: list[_Candidate],
                 all_passing: list[str], *, image: str | None, repo: str, base_commit: str,
                 problem_statement: ProblemStatement, measure_whole_suite: bool) -> None:
        self.open_runtime, self.test_command, self.config = open_runtime, test_command, config
        self.report, self.notify, self.all_passing = report, notify, all_passing
        self.image, self.repo, self.base_commit = image, repo, base_commit
        self.problem_statement, self.measure_whole_suite = problem_statement, measure_whole_suite
        self.queue = iter(candidates)
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.per_function: Counter[tuple[str, str]] = Counter()
        self.tried = 0

    def next_candidate(self) -> _Candidate | None:
        config = self.config
        with self.lock:
            while len(self.report.tasks) < config.max_tasks and (
                    config.max_candidates is None or self.tried < config.max_candidates):
                candidate = next(self.queue, None)
                if candidate is None:
                    return None
                if self.per_function[(candidate.path, candidate.mutation.function)] >= config.max_per_function:
                    continue
                self.tried += 1
                return candidate
            return None

    def work(self) -> None:
        with self.open_runtime() as runtime:
            harness = PytestHarness(runtime, self.test_command)
            harness.serve()
            while (candidate := self.next_candidate()) is not None:
                extra = []
                if self.config.extra_pass_to_pass:
                    rest = [t for t in self.all_passing if t not in set(candidate.covering)]
                    extra = random.Random(f"{self.config.seed}:{candidate.mutation.source}").sample(
                        rest, min(self.config.extra_pass_to_pass, len(rest)))
                outcome = _validate(runtime, harness, candidate, extra, self.config, self.measure_whole_suite,
                                    self.all_passing)
                with self.lock:
                    self._record(runtime, candidate, extra, outcome)

    def _record(self, runtime: ShellRuntime, candidate: _Candidate, extra: list[str], outcome) -> None:
        """Count the candidate's outcome and keep it as a task when it is a new bug that fails a test."""
        stats = self.report.stats[candidate.mutation.operator]
        stats.tried += 1
        if outcome is None:
            stats.timed_out += 1
            self.notify("tried", self.report)
            return
        run, setup_patch, fix, timing = outcome
        failing = [t for t in candidate.tests + extra if not run.passed(t)]
        import_error = bool(failing) and all(run.status(t) in ("MISSING", "ERROR") for t in failing)
        digest = content_digest(f"{candidate.path}\0{candidate.mutation.source}", length=None)
        if not failing or digest in self.seen or len(self.report.tasks) >= self.config.max_tasks:
            stats.no_failing_test += not failing
            self.notify("tried", self.report)
            return
        if import_error:
            stats.import_error += 1
            if self.config.drop_import_errors:
                self.notify("tried", self.report)
                return
        self.seen.add(digest)
        self.per_function[(candidate.path, candidate.mutation.function)] += 1
        stats.valid += 1
        self.report.timings.append(timing)
        ctx = MutationContext(self.repo, failing, run.messages, candidate.mutation, candidate.path)
        self.report.tasks.append(_task(
            ctx, digest, self.image, self.base_commit, runtime.workdir, setup_patch, fix, self.test_command,
            _pass_to_pass(candidate, extra, run), import_error, self.problem_statement,
        ))
        self.notify("valid", self.report)


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
        setup_patch = runtime.run_checked(f"git diff -- {bash_quote(path)}")
        fix = runtime.run_checked(f"git diff -R -- {bash_quote(path)}")
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
