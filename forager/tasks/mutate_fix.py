"""Mutate-fix task generation: plant a bug with an AST operator, keep it if the tests notice.

As CWM did, and then some:

1. Run the repository's suite once with per-test coverage (Forager's own coverage: a pytest-cov the
   project enables is kept out of the way). A function is a target only if tests that pass execute
   it; when there is none, the error says why (`forager.tasks.mutate_targets`).
2. Enumerate candidate bugs in the targets (`forager.tasks.mutate`), interleaved across operators
   and capped per function, so a small budget still covers many operators and functions.
3. Validate each candidate through a pytest fork server (pytest, its plugins and the compiled
   modules that did not change stay warm), running only the tests that can notice it: those that
   execute the changed lines, or every test covering the function when the change reaches further.
   FAIL_TO_PASS are the tests that now fail; PASS_TO_PASS the other tests covering the function
   (plus an optional sample of the rest). A candidate with no FAIL_TO_PASS is dropped, as are
   duplicates, near-duplicates (the same kind of change on the same lines failing the same tests)
   and, when asked, bugs that break the import.
4. The problem statement says what a user would see (which tests fail and how, a collection error's
   text included), never the mutation: tracebacks lose the mutated lines (`statements.redact`).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from forager.core import DEFAULT_TEST_COMMAND, ForagerError, Task
from forager.files import content_digest
from forager.harness import PytestCommand, PytestHarness, TestRun
from forager.runtime.base import ShellRuntime, bash_quote
from forager.tasks.mutate import OPERATORS, Mutation
from forager.tasks.mutate_targets import Candidate, find_candidates, find_targets, source_files, why_no_target
from forager.tasks.statements import (
    MutationContext,
    ProblemStatement,
    collection_error_for,
    collection_errors,
    default_problem_statement,
    redact,
)
from forager.workers import run_workers


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
    near_duplicate: int = 0
    """Valid, but the same kind of change on the same lines as a kept task, failing the same tests."""

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
    candidates_s: float = 0.0
    """Finding the targets and enumerating their candidate bugs."""
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
            "candidates_s": round(self.candidates_s, 2),
            "validation_s": round(self.validation_s, 2),
            "per_operator": {op: {**asdict(s), "yield": round(s.yield_, 3)} for op, s in sorted(self.stats.items())},
        }


# -- the pipeline -------------------------------------------------------------------------------------
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
              report: MutateReport) -> tuple[str, set[str], list[Candidate]]:
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
        started = time.monotonic()
        files = source_files(runtime)
        targets = find_targets(runtime, files, coverage, passing)
        report.target_functions = sum(len(t.covering) for t in targets)
        if not targets:
            raise ForagerError(why_no_target(files, coverage, len(passing)))
        candidates = list(find_candidates(targets, coverage, passing, config.operators, random.Random(config.seed)))
        report.candidates, report.candidates_s = len(candidates), time.monotonic() - started
        if not candidates:
            raise ForagerError(f"no candidate bug in the {report.target_functions} target functions with the "
                               f"operators {', '.join(config.operators)}; choose more operators")
    return base_commit, passing, candidates


class _Validation:
    """Workers take candidates in order, each in its own container, and keep the bugs that fail a test."""

    def __init__(self, open_runtime: Callable[[], ShellRuntime], test_command: str, config: MutateConfig,
                 report: MutateReport, notify: Callable[[str, MutateReport], None], candidates: list[Candidate],
                 all_passing: list[str], *, image: str | None, repo: str, base_commit: str,
                 problem_statement: ProblemStatement, measure_whole_suite: bool) -> None:
        self.open_runtime, self.test_command, self.config = open_runtime, test_command, config
        self.report, self.notify, self.all_passing = report, notify, all_passing
        self.image, self.repo, self.base_commit = image, repo, base_commit
        self.problem_statement, self.measure_whole_suite = problem_statement, measure_whole_suite
        self.queue = iter(candidates)
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.near: set[tuple] = set()
        self.per_function: Counter[tuple[str, str]] = Counter()
        self.tried = 0

    def next_candidate(self) -> Candidate | None:
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
            harness = PytestHarness(runtime, _validation_command(self.test_command))
            harness.serve(bytecode_cache=True)
            tree = _WorkTree(runtime, harness.tools_dir())
            while (candidate := self.next_candidate()) is not None:
                extra = []
                if self.config.extra_pass_to_pass:
                    rest = [t for t in self.all_passing if t not in set(candidate.covering)]
                    extra = random.Random(f"{self.config.seed}:{candidate.mutation.source}").sample(
                        rest, min(self.config.extra_pass_to_pass, len(rest)))
                outcome = _validate(tree, harness, candidate, extra, self.config, self.measure_whole_suite,
                                    self.all_passing)
                with self.lock:
                    self._record(runtime, candidate, extra, outcome)

    def _record(self, runtime: ShellRuntime, candidate: Candidate, extra: list[str], outcome) -> None:
        """Count the candidate's outcome and keep it as a task when it is a new bug that fails a test."""
        stats = self.report.stats[candidate.mutation.operator]
        stats.tried += 1
        if outcome is None:
            stats.timed_out += 1
            self.notify("tried", self.report)
            return
        run, setup_patch, fix, timing = outcome
        m = candidate.mutation
        failing = [t for t in candidate.tests + extra if not run.passed(t)]
        import_error = bool(failing) and all(run.status(t) in ("MISSING", "ERROR") for t in failing)
        digest = content_digest(f"{candidate.path}\0{m.source}", length=None)
        # The same kind of change on the same lines failing the same tests is the same task for an agent.
        near = (candidate.path, m.start_line, m.end_line, m.operator, m.description, tuple(failing))
        if not failing or digest in self.seen or len(self.report.tasks) >= self.config.max_tasks:
            stats.no_failing_test += not failing
            self.notify("tried", self.report)
            return
        if near in self.near:
            stats.near_duplicate += 1
            self.notify("tried", self.report)
            return
        if import_error:
            stats.import_error += 1
            if self.config.drop_import_errors:
                self.notify("tried", self.report)
                return
        self.seen.add(digest)
        self.near.add(near)
        self.per_function[(candidate.path, m.function)] += 1
        stats.valid += 1
        self.report.timings.append(timing)
        messages, collection_error = _messages(run, failing, m, candidate.path)
        ctx = MutationContext(self.repo, failing, messages, m, candidate.path)
        task = _task(ctx, digest, self.image, self.base_commit, runtime.workdir, setup_patch, fix, self.test_command,
                     _pass_to_pass(candidate, extra, run), import_error, self.problem_statement)
        if collection_error:
            task.metadata["collection_error"] = collection_error
        self.report.tasks.append(task)
        self.notify("valid", self.report)


def _messages(run: TestRun, failing: list[str], mutation: Mutation, path: str) -> tuple[dict[str, str], str]:
    """Each failing test's error text, redacted; a test that never ran gets the collection error that
    stopped it. Returns them and that collection error ("" when none)."""
    errors = collection_errors(run.log)
    messages = {t: run.messages.get(t) or "" for t in failing}
    collection_error = ""
    for test in failing:
        if not messages[test] and run.status(test) in ("MISSING", "ERROR"):
            messages[test] = collection_error = collection_error or collection_error_for(test, errors)
    return {t: redact(text, mutation, path) for t, text in messages.items() if text}, \
        redact(collection_error, mutation, path)


def _pass_to_pass(candidate: Candidate, extra: list[str], run: TestRun) -> list[str]:
    """Tests that ran and passed, and the covering tests that did not need to run (they cannot fail)."""
    ran = set(candidate.tests) | set(extra)
    unaffected = [t for t in candidate.covering if t not in ran]
    return [t for t in candidate.tests if run.passed(t)] + unaffected + [t for t in extra if run.passed(t)]


def _validation_command(test_command: str) -> PytestCommand:
    """The task's pytest command with plain Python tracebacks and no colours: pytest's own traceback
    rendering (source excerpts, highlighting) costs more than running a failing test, and the
    statements need only the error and where it happened."""
    command = PytestCommand.parse(test_command)
    if command is None:
        raise ForagerError(f"not a pytest command: {test_command!r} (expected `[VAR=x] python -m pytest ...`)")
    return PytestCommand(command.python, (*command.args, "--tb=native", "--color=no"), command.env)


class _WorkTree:
    """Puts one mutation at a time in the runtime's repository in one round trip: the file the last one
    changed comes back from git, and only the changed bytes of the new one travel."""

    def __init__(self, runtime: ShellRuntime, scratch: str) -> None:
        self.runtime, self.scratch = runtime, scratch
        self.dirty: str | None = None

    def plant(self, path: str, mutation: Mutation) -> None:
        restore = f"git checkout -q -- {bash_quote(self.dirty)} && " if self.dirty else ""
        self.dirty = path
        if "\ufffd" not in mutation.original:  # else it was read with bad bytes replaced: offsets would be off
            start, end, text = mutation.span
            head, tail = len(mutation.original[:start].encode()), len(mutation.original[:end].encode())
            size = len(mutation.original.encode()) - tail + head + len(text.encode())
            quoted, tmp = bash_quote(path), bash_quote(f"{self.scratch}/planted")
            if self.runtime.run(
                    f"cd {bash_quote(self.runtime.workdir)} && {restore}{{ head -c {head} {quoted} && printf '%s' "
                    f"{bash_quote(text)} && tail -c +{tail + 1} {quoted}; }} > {tmp} && cat {tmp} > {quoted} && "
                    f"test \"$(wc -c < {quoted})\" -eq {size}", 60).ok:
                return
        self.runtime.run_checked(restore + self.runtime.write_command(path, mutation.source))

    def diffs(self, path: str) -> tuple[str, str]:
        """(the mutation as a diff, the reference fix) of `path`, as git writes them."""
        sep = "@@FORAGER-FIX@@"
        quoted = bash_quote(path)
        both = self.runtime.run_checked(f"git diff -- {quoted}; echo {sep}; git diff -R -- {quoted}")
        setup_patch, _, fix = both.partition(f"{sep}\n")
        return setup_patch, fix


def _validate(
    tree: _WorkTree, harness: PytestHarness, candidate: Candidate, extra: list[str], config: MutateConfig,
    measure_whole_suite: bool, all_tests: list[str],
) -> tuple[TestRun, str, str, dict[str, float]] | None:
    """Run the candidate's tests on the mutated file; (run, setup patch, fix, timing), None on a timeout.

    The fork server keeps compiled modules between runs; the planted file is named as changed, so it
    gets a fresh mtime and is compiled again."""
    path = candidate.path
    tree.plant(path, candidate.mutation)
    run = harness.run(candidate.tests + extra, config.test_timeout, changed=[path])
    if run.timed_out:
        return None
    timing = {"selected_s": run.duration_s, "selected_cpu_s": harness.last_cpu_s or 0.0,
              "selected_tests": float(len(candidate.tests) + len(extra))}
    if not any(not run.passed(t) for t in candidate.tests + extra):
        return run, "", "", timing  # not a task: no diff needed
    if measure_whole_suite:
        timing["whole_s"] = harness.run(all_tests, config.test_timeout * 10).duration_s
        timing["whole_cpu_s"] = harness.last_cpu_s or 0.0
    setup_patch, fix = tree.diffs(path)
    return run, setup_patch, fix, timing


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
