"""The reference policy: replays a task's known fix through the real tools, as an engineer would.

Run the failing tests, look at the code, `str_replace` each hunk of the fix, run the tests again,
submit. It needs no model: it validates tasks and drives the quickstart. It is stateless (the turn
is the number of assistant messages so far), so one instance serves any number of episodes at once.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from unidiff import PatchSet

from forager.core import Message, PolicyError, PolicyOutput, Task
from forager.core import ToolCall


def reference_actions(task: Task) -> list[ToolCall]:
    """The tool calls that find and fix the task's problem with its reference patch (or, for a task whose
    answer is not the fix, say a test-generation task, the diff in `metadata["reference_diff"]`)."""
    diff = task.metadata.get("reference_diff") or task.patch
    if not diff:
        raise ValueError(f"task {task.instance_id} has no reference patch to replay")
    tests = " ".join(shlex.quote(t) for t in task.FAIL_TO_PASS)
    run_tests = f"python -m pytest -q -p no:cacheprovider {tests} 2>&1 | tail -n 15"
    actions = [ToolCall(name="bash", arguments={"command": run_tests})]
    for patched_file in PatchSet(diff):
        path = patched_file.path
        if patched_file.is_added_file:
            text = "".join(line.value for hunk in patched_file for line in hunk if line.is_added)
            actions.append(ToolCall(name="create", arguments={"path": path, "file_text": text}))
            continue
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


def as_cwm_text(call: ToolCall, thought: str = "") -> str:
    """The tool call in the CWM tag format: bash gets its command as the body, other tools JSON."""
    body = call.arguments.get("command", "") if call.name == "bash" else (
        json.dumps(call.arguments) if call.arguments else "")
    prefix = f"{thought}\n" if thought else ""
    return f"{prefix}<tool: {call.name}>\n{body}\n</tool>" if body else f"{prefix}<tool: {call.name}>\n</tool>"


_THOUGHTS = {"bash": "Let me run the failing tests.", "view": "Let me look at the code involved.",
             "str_replace": "This is the bug; here is the fix.", "submit": "The tests pass now; submitting."}


def scripted_output(call: ToolCall, tools: list[dict[str, Any]] | None, index: int, started: float) -> PolicyOutput:
    """A PolicyOutput carrying `call`, as text (tag format) or as an OpenAI function call."""
    latency = time.monotonic() - started
    if tools:
        tool_call = {"id": f"call_{index}", "type": "function",
                     "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
        return PolicyOutput(text="", tool_calls=[tool_call], finish_reason="tool_calls", latency_s=latency)
    return PolicyOutput(text=as_cwm_text(call, _THOUGHTS.get(call.name, "")), latency_s=latency)


class ReferencePolicy:
    """Acts out `reference_actions(task)`, one per turn; text only (no tokens: not for training)."""

    name = "reference"
    policy_version = 0

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        started = time.monotonic()
        if task is None:
            raise PolicyError("the reference policy needs the task (run it through the agent loop)")
        try:
            actions = reference_actions(task)
        except ValueError as err:
            raise PolicyError(str(err)) from err
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        call = actions[turn] if turn < len(actions) else ToolCall(name="submit")
        return scripted_output(call, tools, turn, started)
