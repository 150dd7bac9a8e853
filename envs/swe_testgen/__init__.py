"""swe-testgen: write a test that reproduces an issue, graded without and with the fix (see README.md)."""

from .env import TASK_PROMPT, SWETestGenEnv, testgen_tasks
from .grading import grade_generated_tests
from .tasks import TESTGEN_KIND, testgen_task

__all__ = ["TASK_PROMPT", "TESTGEN_KIND", "SWETestGenEnv", "grade_generated_tests", "testgen_task", "testgen_tasks"]
