"""The ForagerAgent's configuration (prompts, tool-call format, budgets) and a collection's (CollectConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forager.core import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_CONTEXT_TOKENS,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_TOKENS_PER_TURN,
    DEFAULT_MAX_TURNS,
    ForagerError,
    Task,
)
from forager.envs.prompts import DEFAULT_PROMPTS as _PROMPTS
from forager.envs.prompts import PROMPT_FIELDS, PromptTemplates, template_fields


class AgentConfig(BaseModel):
    """How the agent talks to the policy and how long an episode may run.

    The defaults follow CWM's SWE environment where it makes sense on a laptop: one tool call per
    turn in the `<tool: NAME>` tag format, the remaining budget at the end of every observation,
    120 s per command. CWM's RL used 128 turns and a 131,072-token context.
    """

    model_config = ConfigDict(extra="forbid")

    system_prompt: str = _PROMPTS["system_prompt"]
    """Template of the system message; fields: the names in PROMPT_FIELDS, e.g. `{workdir}`, `{tool_help}`."""
    task_prompt: str = _PROMPTS["task_prompt"]
    """Template of the first user message (same fields)."""
    cwm_tool_help: str = _PROMPTS["cwm_tool_help"]
    """The `{tool_help}` text in the `cwm` format."""
    openai_tool_help: str = _PROMPTS["openai_tool_help"]
    """The `{tool_help}` text in the `openai` format."""
    tool_format: Literal["cwm", "openai"] = "cwm"
    """`cwm`: the tool call is text in the reply (`<tool: NAME>` ... `</tool>`, JSON understood too);
    `openai`: the server's function calling (`tools=` in the request, `tool_calls` in the reply)."""
    max_turns: int = Field(DEFAULT_MAX_TURNS, ge=1)
    """Tool calls before the episode is cut off (and graded as it stands)."""
    max_context_tokens: int = Field(DEFAULT_MAX_CONTEXT_TOKENS, ge=256)
    """Tokens of the whole conversation; the episode ends `out_of_context` before it would overflow."""
    max_tokens_per_turn: int = Field(DEFAULT_MAX_TOKENS_PER_TURN, ge=1)
    """Most tokens sampled for one assistant message."""
    command_timeout: float = Field(DEFAULT_COMMAND_TIMEOUT, gt=0)
    """Seconds a bash command may run before it is killed (its observation says so)."""
    max_output_bytes: int = Field(DEFAULT_MAX_OUTPUT_BYTES, ge=256)
    """An observation longer than this is cut (head and tail kept)."""
    budget_in_observation: bool = True
    """End every observation with the turns and tokens left, as CWM does."""
    grade_on_abort: bool = True
    """Grade the diff as it stands when the episode ends out of context or on a policy error (an
    environment error cannot be graded: its reward is the unresolved reward)."""
    chars_per_token: float = Field(3.0, gt=0)
    """Estimate of text length per token, used only when the policy reports no token counts."""

    @model_validator(mode="after")
    def _templates_are_valid(self) -> AgentConfig:
        for name in ("system_prompt", "task_prompt"):
            template = getattr(self, name)
            try:
                unknown = template_fields(template) - set(PROMPT_FIELDS)
            except ValueError as err:
                raise ValueError(f"{name} is not a valid template ({err}); write literal braces as {{{{ and }}}}")
            if unknown:
                raise ValueError(f"{name} uses unknown field(s) {sorted(unknown)}; known: {', '.join(PROMPT_FIELDS)}")
        return self

    def prompt_templates(self) -> PromptTemplates:
        """The templates SWEEnv renders at reset (`options["prompts"]`), tool help in this tool format."""
        tool_help = self.cwm_tool_help if self.tool_format == "cwm" else self.openai_tool_help
        return PromptTemplates(self.system_prompt, self.task_prompt, tool_help)

    def tool_help(self) -> str:
        return self.prompt_templates().tool_help.format(command_timeout=self.command_timeout)

    def render(self, template: str, task: Task, workdir: str) -> str:
        """`template` with this config's budgets (the env renders the episode's own prompts)."""
        templates = PromptTemplates(template, "", self.prompt_templates().tool_help)
        return templates.render(task, workdir, max_turns=self.max_turns, max_context_tokens=self.max_context_tokens,
                                command_timeout=self.command_timeout)[0]


class CollectConfig(BaseModel):
    """How a collection runs: samples per task, workers, runtime, Ray, reward and warm containers."""

    model_config = ConfigDict(extra="forbid")

    samples_per_task: int = Field(1, ge=1)
    """Episodes per task (a GRPO group is the samples of one task)."""
    workers: int = Field(1, ge=1)
    """Episodes running at once (each with its own container)."""
    runtime: str = "auto"
    """`docker`, `local`, or `auto` (Docker when the task's image is there)."""
    ray_address: str | None = None
    """Run the episodes on a Ray cluster (`auto`, `ray://host:10001`, or `local` for a new local one)."""
    reward: dict[str, Any] = Field(default_factory=dict)
    """RewardConfig fields (e.g. `{"unresolved": -1.0}`)."""
    docker_limits: dict[str, Any] = Field(default_factory=dict)
    warm_pool: int = Field(0, ge=0)
    """Containers kept started ahead per image, so resets and gradings do not wait for `docker run`."""
    env_id: str | None = None
    """A Gymnasium id (`forager envs list`) to run instead of forager/SWE-v0. A SWE environment (a SWEEnv
    subclass, say forager/SWE-TestGen-v0) runs Tasks with this runtime, reward, limits and pool; a text
    environment's tasks are ids (or `seed:N`), and runtime, reward, limits and pool are its own business."""
    docker_hosts: list[str] = Field(default_factory=list)
    """Docker engines the env containers run on, as DOCKER_HOST names one (`tcp://HOST:2375`, `ssh://USER@HOST`,
    `unix:///PATH`): worker i's episodes and their gradings on `docker_hosts[i % len]`, each host needing the
    tasks' images; empty: the default engine (DOCKER_HOST or the local socket). Every host must answer
    before the first episode starts."""

    @field_validator("docker_hosts")
    @classmethod
    def _hosts_are_urls(cls, hosts: list[str]) -> list[str]:
        from forager.runtime.engine import HOST_SCHEMES

        for host in hosts:
            scheme, sep, rest = host.partition("://")
            if not sep or scheme not in HOST_SCHEMES or not rest:
                raise ValueError(f"{host!r} is not a Docker host URL; write it as DOCKER_HOST would: "
                                 "tcp://HOST:PORT, ssh://USER@HOST or unix:///PATH")
        return hosts

    @model_validator(mode="after")
    def _hosts_need_docker(self) -> CollectConfig:
        if self.docker_hosts and self.runtime == "local":
            raise ValueError("docker_hosts run the env containers on Docker engines: use the docker (or auto) runtime")
        return self

    def docker_host(self, worker: int) -> str | None:
        """The engine of worker number `worker`: `docker_hosts[worker % len]`, or None (the default engine)."""
        return self.docker_hosts[worker % len(self.docker_hosts)] if self.docker_hosts else None

    @property
    def text_env(self) -> str | None:
        """`env_id` when it names a text environment rather than a SWE one, else None."""
        from forager.agent.text_envs import swe_env_class

        return self.env_id if self.env_id and swe_env_class(self.env_id) is None else None


def load_agent_config(path: str | Path | None = None, **overrides: Any) -> AgentConfig:
    """The defaults, updated by the `agent:` section of a YAML file (or the whole file), then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ForagerError(f"cannot read the agent config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ForagerError(f"{path}: expected a mapping (optionally under `agent:`), got {type(data).__name__}")
        values = dict(data.get("agent", data))
    values.update({k: v for k, v in overrides.items() if v is not None})
    prompts = values.pop("prompts", None)  # a prompt set by name, or a YAML file beside the config
    if prompts:
        from forager.envs.prompts import load_prompt_set

        chosen = Path(path).parent / prompts if path is not None and str(prompts).endswith((".yaml", ".yml")) else prompts
        values = {**load_prompt_set(chosen), **values}
    try:
        return AgentConfig(**values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors())
        raise ForagerError(f"invalid agent config{f' in {path}' if path else ''}: {problems}") from err
