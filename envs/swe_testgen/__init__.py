"""swe-testgen: write a test that reproduces an issue, graded without and with the fix (see README.md)."""

from .env import TASK_PROMPT, SWETestGenEnv, to_testgen_tasks
from .grading import grade_generated_tests
from .tasks import TESTGEN_KIND, to_testgen_task

__all__ = ["TASK_PROMPT", "TESTGEN_KIND", "SWETestGenEnv", "grade_generated_tests", "to_testgen_task", "to_testgen_tasks"]
