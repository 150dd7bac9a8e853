"""Check tasks before anyone trains on them: the reference fix must resolve, the empty patch must not."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from forager.core import Task
from forager.rewards import RewardConfig, RewardResult, grade_patch
from forager.runtime.base import ShellRuntime


@dataclass
class TaskCheck:
    task: Task
    gold: RewardResult | None
    empty: RewardResult | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.gold and self.gold.resolved) and not (self.empty and self.empty.resolved)

    @property
    def problem(self) -> str | None:
        if self.error:
            return self.error
        if not (self.gold and self.gold.resolved):
            failing = [t for t, s in (self.gold.tests_status if self.gold else {}).items() if s not in ("PASSED", "XFAIL")]
            why = (self.gold.error if self.gold else None) or f"{len(failing)} test(s) fail: {', '.join(failing[:3])}"
            return f"the reference fix does not resolve it ({why})"
        if self.empty and self.empty.resolved:
            return "the empty patch resolves it (FAIL_TO_PASS tests pass without a fix)"
        return None


def check_task(task: Task, open_runtime: Callable[[Task], ShellRuntime]) -> TaskCheck:
    if not task.patch:
        return TaskCheck(task, None, None, "the task has no reference `patch`")
    if not task.FAIL_TO_PASS:
        return TaskCheck(task, None, None, "the task has no FAIL_TO_PASS tests")
    try:
        gold = grade_patch(task, task.patch, open_runtime, RewardConfig())
        empty = grade_patch(task, "", open_runtime, RewardConfig())
    except Exception as err:  # noqa: BLE001 - one broken task must not stop the others
        return TaskCheck(task, None, None, f"{type(err).__name__}: {err}")
    return TaskCheck(task, gold, empty)


def check_tasks(
    tasks: Iterable[Task], open_runtime: Callable[[Task], ShellRuntime], *, workers: int = 2,
    on_done: Callable[[TaskCheck], None] | None = None,
) -> list[TaskCheck]:
    """Grade each task's reference fix and the empty patch in fresh runtimes, `workers` at a time."""
    def one(task: Task) -> TaskCheck:
        check = check_task(task, open_runtime)
        if on_done:
            on_done(check)
        return check

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="forager-validate") as pool:
        return list(pool.map(one, tasks))
