"""The reference policy: replays a task's known fix through the real tools, as an engineer would.

Run the failing tests, look at the code, `str_replace` each hunk of the fix, run the tests again,
submit. It needs no model: it validates tasks and drives the quickstart.
"""

from __future__ import annotations

import shlex

from unidiff import PatchSet

from forager.core import Task
from forager.envs.tools import ToolCall


def reference_actions(task: Task) -> list[ToolCall]:
    """The tool calls that find and fix the task's problem with its reference patch."""
    if not task.patch:
        raise ValueError(f"task {task.instance_id} has no reference patch to replay")
    tests = " ".join(shlex.quote(t) for t in task.FAIL_TO_PASS)
    run_tests = f"python -m pytest -q -p no:cacheprovider {tests} 2>&1 | tail -n 15"
    actions = [ToolCall(name="bash", arguments={"command": run_tests})]
    for patched_file in PatchSet(task.patch):
        path = patched_file.path
        for hunk in patched_file:
            first = max(1, hunk.source_start)
            actions.append(ToolCall(name="view", arguments={
                "path": path, "view_range": [first, first + max(hunk.source_length, 1) - 1]}))
            old = "".join(line.value for line in hunk if line.is_context or line.is_removed)
            new = "".join(line.value for line in hunk if line.is_context or line.is_added)
            actions.append(ToolCall(name="str_replace", arguments={"path": path, "old_str": old, "new_str": new}))
    actions.append(ToolCall(name="bash", arguments={"command": run_tests}))
    actions.append(ToolCall(name="submit"))
    return actions


class ReferencePolicy:
    """Yields the reference actions one per turn, rendered in the CWM tag format (JSON arguments)."""

    def __init__(self, task: Task) -> None:
        self._actions = iter(reference_actions(task))

    def next_action(self) -> ToolCall:
        return next(self._actions, ToolCall(name="submit"))
