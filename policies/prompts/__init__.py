"""Prompt sets (`forager prompts list`): the system and task templates and the tool help, by name, one YAML file each
beside this module; `forager collect --prompts NAME` (or a YAML file of the same keys) chooses one."""

from __future__ import annotations

from importlib import resources

import yaml

from forager.envs.prompts import DEFAULT_PROMPTS, PROMPT_SET_KEYS


def read(name: str) -> dict[str, str]:
    """The templates in `NAME.yaml` beside this module."""
    return yaml.safe_load(resources.files(__package__).joinpath(f"{name}.yaml").read_text())


def default() -> dict[str, str]:
    """Forager's own prompts (forager/envs/prompts.yaml): a short system prompt with the tool help, and the issue
    with the turn and token budget."""
    return {key: DEFAULT_PROMPTS[key] for key in PROMPT_SET_KEYS}


def cwm() -> dict[str, str]:
    """Close to CWM's SWE-RL prompt: CWM's reasoning system prompt, an `# Environment` section with the budgets and
    each tool's specification, the issue in `<issue_description>` tags, correctness above all."""
    return read("cwm")


def minimal() -> dict[str, str]:
    """Terse: a two-line system prompt, the issue, one line of tool help; for small models and short contexts."""
    return read("minimal")


__all__ = ["cwm", "default", "minimal", "read"]
