"""Grading a generated test: it must fail on the buggy code and pass once the reference fix is in.

Two fresh runtimes start from the task's start tree (the revealing tests taken out, `tasks`). Both
get the agent's test files, exactly (`rewards.apply`); one also gets the reference fix. Everything
else the agent changed is left out: it writes tests, not code. Then both trees are made alike in
everything but their code: `.git` and bytecode caches go, and every file is rewritten with one
fixed time, so a test cannot tell the two apart by git status, timestamps, inodes or stale `.pyc`
files, only by what the code does. In each, pytest collects the test files the agent touched; the
tests that were not there before are the agent's, and they run `repeats` times:

- with the fix, every one of them passes in every run;
- without it, at least one of them fails (or errors, or is not even collected) in every run.

Then the reward is `resolved`, else `unresolved`, with the reason in `error`. Running each side more
than once makes a test that fails at random worth little: to pass, it must fail `repeats` times
without the fix and pass `repeats` times with it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from forager.core import ForagerError, Task
from forager.harness import PytestCommand, PytestHarness
from forager.harness.diffparse import DiffParseError, FileDiff, render
from forager.harness.protected import refusal
from forager.rewards.apply import apply_files
from forager.rewards.grading import RewardConfig, RewardResult, apply_patch, grading_preparation, read_agent_diff
from forager.runtime.base import ShellRuntime, prepared

TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")
"""The files a generated test may live in; `conftest.py` is not one (it would reach every test)."""
FIXED_TIME = 946684800  # 2000-01-01: every file of both trees gets it

# One process that makes the tree look the same with or without the fix, whatever the fix changed.
NORMALIZE = f"""
import os, shutil
shutil.rmtree(".git", ignore_errors=True)
for top, dirs, files in os.walk(".", topdown=True):
    for name in [d for d in dirs if d == "__pycache__"]:
        shutil.rmtree(os.path.join(top, name), ignore_errors=True)
        dirs.remove(name)
for top, dirs, files in os.walk(".", topdown=False):
    for name in sorted(files):
        path = os.path.join(top, name)
        if os.path.islink(path) or name.endswith(".pyc"):
            continue
        try:
            with open(path, "rb") as old, open(path + ".forager-copy", "wb") as new:
                shutil.copyfileobj(old, new)
            shutil.copymode(path, path + ".forager-copy")
            os.replace(path + ".forager-copy", path)
            os.utime(path, ({FIXED_TIME}, {FIXED_TIME}))
        except OSError:
            pass
    try:
        os.utime(top, ({FIXED_TIME}, {FIXED_TIME}))
    except OSError:
        pass
"""


@dataclass
class Side:
    """One tree's run: the agent's tests it collected, their statuses in each run, and its log."""

    fixed: bool
    new_tests: list[str] = field(default_factory=list)
    runs: list[dict[str, str]] = field(default_factory=list)
    complete: bool = True
    log: str = ""
    error: str | None = None
    tests_s: float = 0.0


def kept_file_refusal(file: FileDiff) -> str | None:
    """Why grading leaves this file of the agent's diff out (None if it is a test file it keeps)."""
    if file.new_path is None:
        return "test generation keeps no deletion"
    if file.kind in ("rename", "copy") or file.binary:  # a rename takes a file away; every path must be a test's
        return f"test generation keeps only plain edits of test files, not a {'binary' if file.binary else file.kind}"
    for path in file.paths:
        if why := refusal(path):
            return why
        if not TEST_FILE.search(path):
            return "test generation keeps only test files (test_*.py, *_test.py): the code is not the agent's to change"
    return None


def grade_generated_tests(task: Task, diff: str, open_runtime: Callable[[Task], ShellRuntime],
                          config: RewardConfig | None = None, repeats: int = 2) -> RewardResult:
    """The reward of the tests in `diff` for `task` (see the module's docstring)."""
    config = config or RewardConfig()
    started = time.monotonic()
    refused: dict[str, str] = {}

    def result(error: str | None, sides: tuple[Side, Side] | None = None, **kwargs: object) -> RewardResult:
        """Resolved when there is no error; the logs of both sides, and what was left out and why."""
        logs = "\n".join(f"## {'with' if s.fixed else 'without'} the fix\n{s.log}" for s in sides or ())
        resolved = error is None
        return RewardResult(config.resolved if resolved else config.unresolved, resolved, "FULL" if resolved else "NO",
                            error=error, excluded_files=sorted(refused), excluded_reasons=dict(sorted(refused.items())),
                            log=logs, hardened=False, duration_s=time.monotonic() - started,
                            **kwargs)  # type: ignore[arg-type]

    if PytestCommand.parse(task.test_command) is None:
        return result(f"test generation runs pytest; task {task.instance_id}'s tests run with {task.test_command!r}")
    if not task.patch:
        return result(f"task {task.instance_id} has no reference fix to check the tests against")
    try:
        files = read_agent_diff(diff)
    except DiffParseError as err:
        return result(f"the agent's patch cannot be read: {err}", patch_applied=False)
    kept = []
    for file in files:
        why = kept_file_refusal(file)
        if why:
            refused[file.new_path or file.old_path or "?"] = why
        else:
            kept.append(file)
    if not kept:
        return result("no test file in the diff: write the reproduction as tests in a test_*.py file", patch_applied=False)
    with ThreadPoolExecutor(2, thread_name_prefix="forager-testgen") as workers:
        buggy, fixed = workers.map(lambda f: _run_side(task, kept, open_runtime, f, repeats, refused), (False, True))
    return _verdict(config, buggy, fixed, result)


def _verdict(config: RewardConfig, buggy: Side, fixed: Side, result: Callable[..., RewardResult]) -> RewardResult:
    sides = (buggy, fixed)
    timing = {"tests_s": buggy.tests_s + fixed.tests_s}
    for side in sides:
        if side.error:
            return result(side.error, sides, patch_applied=False, **timing)
    tests = fixed.new_tests
    if not tests:
        return result("no new test was collected from the test files the diff changed (see the log)", sides, **timing)
    statuses = {t: fixed.runs[-1].get(t, "MISSING") if fixed.runs else "MISSING" for t in tests}
    failing = [t for t in tests if not fixed.runs or any(run.get(t) != "PASSED" for run in fixed.runs)]
    reproduced = [t for t in tests if all(run.get(t, "MISSING") != "PASSED" for run in buggy.runs)]
    buggy_fails = all(any(run.get(t, "MISSING") != "PASSED" for t in tests) for run in buggy.runs)
    shown = {"tests_status": statuses, "fail_to_pass": {"success": [t for t in reproduced if t not in failing],
                                                        "failure": [t for t in tests if t not in reproduced or t in failing]}}
    if not fixed.complete or failing:
        why = "the test run did not finish normally" if not fixed.complete else f"{', '.join(failing[:3])} did not pass"
        return result(f"with the reference fix, the new tests must pass: {why}", sides, **shown, **timing)
    if not buggy_fails:
        return result("the new tests pass on the buggy code too: they do not reproduce the issue", sides, **shown, **timing)
    return result(None, sides, **shown, **timing)

def _run_side(task: Task, files: list[FileDiff], open_runtime: Callable[[Task], ShellRuntime], fixed: bool,
              repeats: int, refused: dict[str, str]) -> Side:
    """Set up one tree (the start tree, the agent's test files, the fix when `fixed`) and run the new tests."""
    side = Side(fixed)
    command = PytestCommand.parse(task.test_command)
    assert command is not None
    with open_runtime(task) as runtime:
        prepared(runtime, grading_preparation(task))
        harness = PytestHarness(runtime, command)
        existing = [f.old_path for f in files if f.old_path]
        try:
            before = set(harness.collect(task.test_timeout, paths=existing)) if existing else set()
            more, applied, error = apply_files(runtime, files)
        except (ForagerError, RuntimeError, ValueError) as err:
            side.error = f"the agent's tests cannot be set up: {str(err)[:500]}"
            return side
        refused.update(more)
        if error or not applied:
            side.error = f"the agent's tests do not apply: {(error or 'every file was refused')[:500]}"
            return side
        if fixed:
            ok, log = apply_patch(runtime, task.patch or "", "fix")
            if not ok:
                side.error = f"the task's reference fix (a broken task) does not apply: {log[-500:]}"
                return side
        python = command.python
        runtime.run_checked(f"{command.env_prefix()}{python} - <<'FORAGER_NORMALIZE'\n{NORMALIZE}\nFORAGER_NORMALIZE",
                            timeout=600)
        try:
            collected = harness.collect(task.test_timeout, paths=sorted({f.new_path for f in applied if f.new_path}))
        except ForagerError as err:
            collected, side.log = [], str(err)
        side.new_tests = [t for t in collected if t not in before]
        logs = [side.log] if side.log else []
        for _ in range(repeats if side.new_tests else 0):
            run = harness.run(side.new_tests, task.test_timeout)
            side.runs.append(run.statuses if run.complete else {})  # a run cut short passed nothing
            side.complete = side.complete and run.complete
            side.tests_s += run.duration_s
            logs.append(run.log[-20000:])
        side.log = "\n".join(logs) or render(applied)
    return side


__all__ = ["TEST_FILE", "grade_generated_tests", "kept_file_refusal"]
