"""Problem statements for mutate-fix tasks: what the agent is told about a planted bug.

The default writes a bug report from the failing tests and their errors, never describing the
change; a `ProblemStatement` of your own (an LLM writing an issue, say) gets the same context.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from forager.tasks.mutate import Mutation


@dataclass
class MutationContext:
    """What a problem-statement writer may use: what the user sees, and (for an LLM) the bug itself."""

    repo: str
    failing: list[str]
    messages: dict[str, str]
    mutation: Mutation
    path: str


ProblemStatement = Callable[[MutationContext], str]


def default_problem_statement(ctx: MutationContext) -> str:
    """A bug report built from the failing tests and their errors; it never describes the change."""
    shown = ctx.failing[:10]
    lines = [f"{len(ctx.failing)} test{'s' if len(ctx.failing) != 1 else ''} of {ctx.repo} started failing:", ""]
    lines += [f"- `{t}`" for t in shown]
    if len(ctx.failing) > len(shown):
        lines.append(f"- ... and {len(ctx.failing) - len(shown)} more")
    first = next((t for t in ctx.failing if ctx.messages.get(t)), None)
    if first:
        lines += ["", f"Running `{first}` fails with:", "", "```", error_excerpt(ctx.messages[first]), "```"]
    lines += ["", "These tests passed before. Find the bug in the library code and fix it; do not change the tests."]
    return "\n".join(lines) + "\n"


def error_excerpt(report: str, max_lines: int = 12) -> str:
    """The `E` lines of a pytest failure (what went wrong, not the code around it) and its location."""
    lines = report.splitlines()
    errors = [line for line in lines if line.startswith("E ")]
    where = [line for line in lines if re.match(r"^\S+\.py:\d+: \w+", line)]
    picked = errors[:max_lines] + where[-1:] if errors else lines[:1] + lines[-max_lines:]
    return "\n".join(dict.fromkeys(picked)).strip() or "(no error text)"
