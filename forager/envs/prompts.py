"""The prompts a model sees, in one place: templates from prompts.yaml, rendered by SWEEnv at reset.

The env renders them because only it knows where the repository ended up (a local runtime's scratch
clone, not the task's `workdir`); an agent hands its own templates in `reset(options={"prompts": ...})`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

import yaml

from forager.core import Task

PROMPT_FIELDS = ("workdir", "repo", "instance_id", "problem_statement", "hints_text", "max_turns",
                 "max_context_tokens", "command_timeout", "tool_help")
"""The fields a system or task template may use, e.g. `{workdir}`, `{tool_help}`."""


def _load_defaults() -> dict[str, str]:
    return yaml.safe_load(resources.files("forager.envs").joinpath("prompts.yaml").read_text())


DEFAULT_PROMPTS: dict[str, str] = _load_defaults()
"""`system_prompt`, `task_prompt`, `cwm_tool_help`, `openai_tool_help` and `tag_format_help` from prompts.yaml."""


def template_fields(template: str) -> set[str]:
    """The top-level field names a format template uses; ValueError for a malformed template."""
    return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f}


@dataclass(frozen=True)
class PromptTemplates:
    """The templates of one episode's first two messages."""

    system_prompt: str = DEFAULT_PROMPTS["system_prompt"]
    task_prompt: str = DEFAULT_PROMPTS["task_prompt"]
    tool_help: str = DEFAULT_PROMPTS["cwm_tool_help"]
    """The `{tool_help}` text; its one field is `{command_timeout}`."""

    @classmethod
    def of(cls, value: PromptTemplates | Mapping[str, str]) -> PromptTemplates:
        """Templates from a mapping with any of the three keys (the rest stay the defaults)."""
        if isinstance(value, PromptTemplates):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown prompt template(s) {sorted(unknown)}; known: system_prompt, task_prompt, tool_help")
        return cls(**value)

    def render(self, task: Task, workdir: str, *, max_turns: int, max_context_tokens: int,
               command_timeout: float) -> tuple[str, str]:
        """(system message, task message) for `task` in the repository at `workdir`."""
        values: dict[str, Any] = {
            "workdir": workdir, "repo": task.repo, "instance_id": task.instance_id,
            "problem_statement": task.problem_statement.strip(), "hints_text": task.hints_text,
            "max_turns": max_turns, "max_context_tokens": max_context_tokens, "command_timeout": command_timeout,
            "tool_help": self.tool_help.format(command_timeout=command_timeout),
        }
        return self.system_prompt.format(**values), self.task_prompt.format(**values)
