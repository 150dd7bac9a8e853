"""The prompts a model sees, in one place: templates from prompts.yaml, rendered by SWEEnv at reset.

The env renders them because only it knows where the repository ended up (a local runtime's scratch
clone, not the task's `workdir`); an agent hands its own templates in `reset(options={"prompts": ...})`.

A prompt set is a named alternative to prompts.yaml's templates (`load_prompt_set`): a `forager.prompts`
plug-in (`forager prompts list`; Forager ships `default`, `cwm` and `minimal` from the top-level
`policies/` folder) or a YAML file of the same keys.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from forager.core import ForagerError, Task

PROMPT_FIELDS = ("workdir", "repo", "instance_id", "problem_statement", "hints_text", "max_turns",
                 "max_context_tokens", "command_timeout", "tool_help")
"""The fields a system or task template may use, e.g. `{workdir}`, `{tool_help}`."""


def _load_defaults() -> dict[str, str]:
    return yaml.safe_load(resources.files("forager.envs").joinpath("prompts.yaml").read_text())


DEFAULT_PROMPTS: dict[str, str] = _load_defaults()
"""`system_prompt`, `task_prompt`, `cwm_tool_help`, `openai_tool_help` and `tag_format_help` from prompts.yaml."""


PROMPT_SET_KEYS = ("system_prompt", "task_prompt", "cwm_tool_help", "openai_tool_help")
"""What a prompt set may hold (AgentConfig's fields of the same names); the keys it leaves out keep their defaults."""


def load_prompt_set(name_or_file: str | Path) -> dict[str, str]:
    """The templates of a prompt set: a `forager.prompts` plug-in by name (a callable returning a mapping),
    or a YAML file (`.yaml`/`.yml`, or any existing file) of PROMPT_SET_KEYS."""
    path = Path(name_or_file).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        try:
            values = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ForagerError(f"cannot read the prompt set {path}: {err}") from err
        return _prompt_set(str(path), values)
    from forager.plugins import discover

    name = str(name_or_file)
    found = discover()
    known = sorted(plugin.name for plugin in found.of("prompts"))
    if name not in known:
        close = ", ".join(difflib.get_close_matches(name, known, n=3, cutoff=0.5))
        raise ForagerError(f"unknown prompt set {name!r}{f'; did you mean {close}?' if close else ''} Known sets: "
                           f"{', '.join(known) or 'none installed'} (`forager prompts list`); or give a YAML file of "
                           f"{', '.join(PROMPT_SET_KEYS)}")
    make = found.get("prompts", name).load()
    try:
        values = make() if callable(make) else make
    except Exception as err:  # noqa: BLE001 - a plug-in's bug, reported as its own
        raise ForagerError(f"prompt set {name!r} failed: {type(err).__name__}: {err}") from err
    return _prompt_set(name, values)


def _prompt_set(name: str, values: Any) -> dict[str, str]:
    """`values` checked to be a mapping of PROMPT_SET_KEYS to text."""
    if not isinstance(values, Mapping):
        raise ForagerError(f"prompt set {name}: expected a mapping of {', '.join(PROMPT_SET_KEYS)}, "
                           f"got {type(values).__name__}")
    unknown = sorted(set(values) - set(PROMPT_SET_KEYS))
    if unknown:
        raise ForagerError(f"prompt set {name}: unknown key(s) {unknown}; known: {', '.join(PROMPT_SET_KEYS)}")
    wrong = sorted(key for key, value in values.items() if not isinstance(value, str))
    if wrong:
        raise ForagerError(f"prompt set {name}: {', '.join(wrong)} must be text")
    return dict(values)


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
