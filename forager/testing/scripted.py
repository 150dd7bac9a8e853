"""Responders that act out tasks' known fixes over the OpenAI API: the reference policy behind HTTP.

With them, benchmarks and tests run the real OpenAI-compatible policy (HTTP, retries, token ids and
logprobs from a vLLM-shaped server) through whole episodes without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forager.core import Task
from forager.policies.reference import as_cwm_text, reference_actions
from forager.testing.openai_server import Reply, Responder, assistant_turns, by_conversation


def task_of(messages: Sequence[dict[str, Any]], tasks: Sequence[Task]) -> Task | None:
    """The task whose problem statement the conversation's first user message quotes."""
    prompt = next((str(m.get("content") or "") for m in messages if m.get("role") == "user"), "")
    # Longest first: one statement may be a prefix of another.
    for task in sorted(tasks, key=lambda t: len(t.problem_statement), reverse=True):
        if task.problem_statement.strip() and task.problem_statement.strip() in prompt:
            return task
    return None


def reference_responder(tasks: Sequence[Task]) -> Responder:
    """Reply to each conversation with the next reference action of its task, in the CWM tag format."""
    by_id = list(tasks)

    def next_reply(messages: list[dict[str, Any]]) -> Reply | str:
        task = task_of(messages, by_id)
        if task is None:
            return Reply(status=400, message="the scripted server knows no task quoted in this conversation")
        actions = reference_actions(task)
        turn = assistant_turns(messages)
        return as_cwm_text(actions[turn]) if turn < len(actions) else "<tool: submit>\n</tool>"

    return by_conversation(next_reply)
