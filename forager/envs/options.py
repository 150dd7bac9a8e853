"""What `SWEEnv.reset(options=...)` accepts: the task and the episode's budgets and prompts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from forager.core import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_CONTEXT_TOKENS,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_TURNS,
    Task,
)
from forager.envs.prompts import PromptTemplates


@dataclass(frozen=True)
class EpisodeOptions:
    """One episode's settings; a reset option overrides the env's own value for that episode only."""

    task: Task | dict[str, Any] | str | None = None
    """The Task (or its dict, or the instance_id of one of the env's tasks); None draws one at random."""
    max_turns: int = DEFAULT_MAX_TURNS
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS
    """The agent's context budget: the prompts state it; the env does not count tokens."""
    context_tokens_left: Callable[[], int] | None = None
    """Asked after every step for the agent's tokens left, which the budget line then shows too."""
    show_budget: bool = True
    """End every observation with the budget left."""
    prompts: PromptTemplates = field(default_factory=PromptTemplates)
    """The system and task templates (a PromptTemplates, or a mapping of its fields)."""

    def updated(self, options: Mapping[str, Any] | None) -> EpisodeOptions:
        """These settings with `options` applied; an unknown key is a ValueError that lists the known ones."""
        options = dict(options or {})
        known = [f.name for f in fields(self)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; SWEEnv.reset accepts: {', '.join(known)}")
        if "prompts" in options:
            options["prompts"] = PromptTemplates.of(options["prompts"])
        return replace(self, **options)
