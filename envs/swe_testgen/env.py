"""SWETestGenEnv: CWM's test-generation environment on Forager's SWE runtime, tools and tasks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from forager.core import Task
from forager.envs.prompts import DEFAULT_PROMPTS, PromptTemplates
from forager.envs.swe import SWEEnv
from forager.rewards import RewardResult
from forager.runtime.base import ShellRuntime

from .grading import grade_generated_tests
from .tasks import TESTGEN_KIND, base_reader, to_testgen_task

TASK_PROMPT = """\
Write a test that reproduces this issue in the repository at {workdir}:

{problem_statement}

Add new test functions to a test file (a new `test_*.py` file, or an existing one). They must fail on \
the code as it is now, because of the issue, and pass once the issue is fixed. Do not fix the code: \
only changes to test files (`test_*.py`, `*_test.py`) are kept. Run your tests to see them fail for \
the right reason, then submit: they are run without and with the real fix.
You have {max_turns} turns and {max_context_tokens} tokens of context."""


class SWETestGenEnv(SWEEnv):
    """Write a test that reproduces an issue: reward 1 when it fails on the buggy code and passes with the fix.

    The tasks are SWEEnv's (the sample repository's by default, or any task file), turned into
    test-generation tasks: the tests that already reveal the bug are taken out of the start tree
    (`tasks.to_testgen_task`). The tools, budgets and warm pool are SWEEnv's; grading
    (`grading.grade_generated_tests`) runs the agent's new tests in two fresh runtimes, without and
    with the task's reference fix, `repeats` times each. The task prompt asks for a test unless the
    agent brings a task prompt of its own.
    """

    grading_runtimes = 2

    def __init__(self, *args: Any, repeats: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.repeats = repeats
        self._converted: dict[tuple[str, str], Task] = {}
        self.tasks = [self.testgen(task) for task in self.tasks]

    def testgen(self, task: Task) -> Task:
        """`task` as a test-generation task (converted once per task and start state)."""
        if task.kind == TESTGEN_KIND:
            return task
        key = (task.instance_id, task.start_digest)
        if key not in self._converted:
            self._converted[key] = to_testgen_task(task, base_reader(task, self.runtime_kind))
        return self._converted[key]

    @classmethod
    def prepare_tasks(cls, tasks: list[Task], runtime: str = "auto") -> list[Task]:
        return to_testgen_tasks(tasks, runtime)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        options = dict(options or {})
        prompts = PromptTemplates.of(options.get("prompts", self.defaults.prompts))
        if prompts.task_prompt == DEFAULT_PROMPTS["task_prompt"]:  # SWE's own: this env asks for a test instead
            options["prompts"] = replace(prompts, task_prompt=TASK_PROMPT)
        return super().reset(seed=seed, options=options)

    def grade_diff(self, task: Task, patch: str, open_graded: Callable[[Task], ShellRuntime]) -> RewardResult:
        return grade_generated_tests(task, patch, open_graded, self.reward_config, self.repeats)

    def _pick_task(self, choice: Task | dict[str, Any] | str | None) -> Task:
        return self.testgen(super()._pick_task(choice))


def to_testgen_tasks(tasks: list[Task], runtime: str = "auto") -> list[Task]:
    """`tasks` as test-generation tasks (what `forager collect --env forager/SWE-TestGen-v0` runs)."""
    return [to_testgen_task(task, base_reader(task, runtime)) for task in tasks]


__all__ = ["TASK_PROMPT", "SWETestGenEnv", "to_testgen_tasks"]
