"""Grading a patch the way SWE-bench does: PASSED or XFAIL count as a pass; resolved means every
FAIL_TO_PASS and PASS_TO_PASS test passes. The repository is set up in a fresh runtime, so nothing
the agent left running or changed outside its diff can touch the result.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from forager.core import Task
from forager.runtime.base import ShellRuntime
from forager.tasks.checkout import checkout_task

PASS_STATUSES = {"PASSED", "XFAIL"}
_REPORT_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED)\s+(\S+)", re.MULTILINE)


@dataclass
class RewardConfig:
    resolved: float = 1.0
    unresolved: float = 0.0
    """0 by default; CWM used -1."""
    partial_credit: bool = False
    """Give the share of passing tests (scaled between `unresolved` and `resolved`) instead of all or nothing."""


@dataclass
class RewardResult:
    reward: float
    resolved: bool
    report: str
    """FULL, PARTIAL or NO, as SWE-bench reports resolution."""
    tests_status: dict[str, str] = field(default_factory=dict)
    patch_applied: bool = True
    log: str = ""
    error: str | None = None
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_pytest_report(log: str) -> dict[str, str]:
    """Per-test status from pytest's `-rA` short summary lines (the last status of a test wins)."""
    return {test: status for status, test in _REPORT_LINE.findall(log)}


def grade_patch(
    task: Task,
    diff: str,
    open_runtime: Callable[[Task], ShellRuntime],
    config: RewardConfig | None = None,
) -> RewardResult:
    """Apply `diff` to the task's starting state in a new runtime, run the task's tests, and grade them."""
    config = config or RewardConfig()
    started = time.monotonic()
    with open_runtime(task) as runtime:
        checkout_task(runtime, task)
        for name, patch in (("agent", diff), ("test", task.test_patch or "")):
            if patch.strip() and not _apply(runtime, patch, name):
                return RewardResult(
                    config.unresolved, False, "NO", patch_applied=False, error=f"the {name} patch does not apply",
                    log=runtime.run("cat /tmp/forager-apply.log", 30).output, duration_s=time.monotonic() - started,
                )
        tests = " ".join(shlex.quote(t) for t in task.tests)
        # Untruncated: the per-test summary lines must all survive, however long the log.
        obs = runtime.session.run(f"{task.test_command} {tests}", task.test_timeout, max_output_bytes=1 << 26)
    statuses = parse_pytest_report(obs.output)
    tests_status = {test: statuses.get(test, "MISSING") for test in task.tests}
    passed = [t for t, s in tests_status.items() if s in PASS_STATUSES]
    resolved = bool(task.tests) and len(passed) == len(task.tests)
    f2p_passed = sum(tests_status[t] in PASS_STATUSES for t in task.FAIL_TO_PASS)
    report = "FULL" if resolved else "PARTIAL" if f2p_passed else "NO"
    if resolved:
        reward = config.resolved
    elif config.partial_credit and task.tests:
        reward = config.unresolved + (config.resolved - config.unresolved) * len(passed) / len(task.tests)
    else:
        reward = config.unresolved
    return RewardResult(
        reward, resolved, report, tests_status, log=obs.output,
        error="the tests timed out" if obs.timed_out else None, duration_s=time.monotonic() - started,
    )


def _apply(runtime: ShellRuntime, patch: str, name: str) -> bool:
    path = f"/tmp/forager-{name}.patch"
    runtime.write_file(path, patch if patch.endswith("\n") else patch + "\n")
    obs = runtime.run(
        f"cd {shlex.quote(runtime.workdir)} && {{ git apply --whitespace=nowarn {path} || "
        f"git apply --whitespace=nowarn --3way {path} || patch -p1 --batch --fuzz=3 -i {path}; }} "
        "> /tmp/forager-apply.log 2>&1",
        120,
    )
    return obs.ok
