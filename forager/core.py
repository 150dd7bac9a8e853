"""Types shared by every part of Forager: Task, Observation, ToolCall, PolicyOutput, Trajectory, the Policy seam,
the errors and the defaults. The Runtime seam is `forager.runtime.base.ShellRuntime`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

# -- defaults: one value each, shared by every signature that offers the knob ----------------------
DEFAULT_TEST_COMMAND = "python -m pytest -rA -p no:cacheprovider -o console_output_style=classic"
DEFAULT_COMMAND_TIMEOUT = 120.0
"""Seconds an agent's shell command may run before it is killed."""
DEFAULT_MAX_OUTPUT_BYTES = 20_000
"""An observation longer than this is cut (head and tail kept)."""
DEFAULT_MAX_TURNS = 64
"""Tool calls per episode before it is cut off and graded as it stands."""
DEFAULT_MAX_CONTEXT_TOKENS = 32_768
"""Tokens of an episode's whole conversation."""
DEFAULT_MAX_TOKENS_PER_TURN = 4096
"""Most tokens sampled for one assistant message."""


class Task(BaseModel):
    """One repository at one commit, a problem to solve there, and the tests that decide success.

    A superset of the SWE-bench instance schema (`instance_id`, `repo`, `base_commit`,
    `problem_statement`, `hints_text`, `created_at`, `version`, `environment_setup_commit`, `patch`,
    `test_patch`, `FAIL_TO_PASS`, `PASS_TO_PASS`), plus what Forager needs to run it: the image, the
    test command and log parser, the planted bug of a mutate-fix task, and free metadata.
    """

    model_config = ConfigDict(extra="forbid")

    instance_id: str
    problem_statement: str
    kind: Literal["mutate-fix", "issue-fix"] = "issue-fix"
    """`mutate-fix`: a bug Forager planted (`setup_patch`); `issue-fix`: a real issue at `base_commit`."""
    repo: str = ""
    """Human-readable repository name, e.g. `owner/name`."""
    image: str | None = None
    """Docker image holding the repository at `workdir` (used by the Docker runtime)."""
    local_repo: str | None = None
    """Path of a local git repository (used by the local runtime)."""
    base_commit: str = "HEAD"
    """Commit (or any git revision) the episode starts from."""
    workdir: str = "/repo"
    """Where the repository lives inside the image."""
    setup_patch: str | None = None
    """Diff applied on top of `base_commit` before the agent starts (a planted bug for mutate-fix)."""
    patch: str | None = None
    """The reference fix (never shown to the agent)."""
    test_patch: str | None = None
    """Tests applied at grading time only (never shown to the agent)."""
    test_command: str = DEFAULT_TEST_COMMAND
    """Command that runs the test ids appended to it. A pytest command runs under Forager's hardened
    harness (results from junit XML); any other command is run as is and read with `log_parser`."""
    log_parser: str = "pytest"
    """How to read a test log: `pytest` (`-rA` summary lines, as swebench's `parse_log_pytest`) or
    `swebench` (the parser swebench registers for `repo`; needs the `swebench` package)."""
    test_timeout: float = 300.0
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    hints_text: str = ""
    created_at: str | None = None
    version: str | None = None
    environment_setup_commit: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Free-form: operator, target function, difficulty, source, ..."""

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _accept_json_lists(cls, value: Any) -> Any:
        # SWE-bench ships these two fields as JSON-encoded strings.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @model_validator(mode="after")
    def _needs_a_repository(self) -> Task:
        if not self.image and not self.local_repo:
            raise ValueError(f"task {self.instance_id!r} names neither an `image` nor a `local_repo`")
        return self

    @property
    def tests(self) -> list[str]:
        """Every test that grading runs, FAIL_TO_PASS first, without duplicates."""
        return list(dict.fromkeys([*self.FAIL_TO_PASS, *self.PASS_TO_PASS]))

    @property
    def start_digest(self) -> str:
        """A short digest of what decides the task's starting tree: where it runs, its base commit, its setup patch."""
        state = "\0".join([self.image or "", self.local_repo or "", self.workdir, self.base_commit, self.setup_patch or ""])
        return hashlib.sha256(state.encode()).hexdigest()[:16]



def task_id_of(task: Task | str) -> str:
    """A Task's `instance_id`, or a plug-in environment's task id as it is."""
    return task.instance_id if isinstance(task, Task) else str(task)


@dataclass
class Observation:
    """What one command produced. A failed or timed-out command is an Observation, never an exception."""

    output: str
    """stdout and stderr interleaved, decoded with replacement, cut to the runtime's size limit."""
    exit_code: int | None
    """None when the command was killed before the shell could report a status."""
    timed_out: bool = False
    truncated: bool = False
    session_restarted: bool = False
    """True when this command ran in a new shell because the previous one died or was killed."""
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    """Forager's own remarks for the agent (timeouts, restarts), kept apart from the command output."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class ForagerError(Exception):
    """Base class for Forager's own errors; the message says what went wrong and what to do."""


class RuntimeUnavailable(ForagerError):
    """The runtime cannot start: the message says what is missing and how to get it."""


# -- actions -------------------------------------------------------------------------------------
class ToolCall(BaseModel):
    """One parsed tool call: a tool name and its (not yet validated) arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


# -- policies ------------------------------------------------------------------------------------
Message = dict[str, Any]
"""A chat message as the OpenAI API spells it: `role`, `content`, and for function calling
`tool_calls` (assistant) or `tool_call_id` (role `tool`)."""


class PolicyOutput(BaseModel):
    """The next assistant message and exactly how it was sampled.

    The trainer trains on `token_ids` as they were sampled (token-in, token-out), never on a chat
    template rendered again later: a different tokenization of the same text is a different action.
    """

    model_config = ConfigDict(extra="forbid")

    text: str
    token_ids: list[int] | None = None
    """The completion's token ids, as sampled (None when the backend cannot return them)."""
    logprobs: list[float] | None = None
    """The sampling log-probability of each token in `token_ids`."""
    prompt_token_ids: list[int] | None = None
    """The whole prompt as the model saw it (the chat template applied), when the backend knows it."""
    finish_reason: str = "stop"
    """`stop`, `length` (hit max_tokens) or `tool_calls`, as the OpenAI API reports it."""
    policy_version: int = 0
    """Which weights sampled this (bumped by every trainer update); staleness is measured with it."""
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI function calls (`{"id", "type": "function", "function": {"name", "arguments"}}`)."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0

    @property
    def trainable(self) -> bool:
        """True when the exact sampled tokens and their logprobs are known."""
        return (self.token_ids is not None and self.logprobs is not None
                and len(self.token_ids) == len(self.logprobs))


class PolicyError(ForagerError):
    """The policy could not produce a message (server down after retries, a rejected request, ...)."""


class PolicyUnavailable(PolicyError):
    """The policy's server could not be reached or kept failing (timeouts, 429, 5xx) after every retry:
    the infrastructure failed, not the policy, so a collection retries the episode on its next run."""


class ContextLengthExceeded(PolicyError):
    """The conversation no longer fits the model's context window."""


@runtime_checkable
class Policy(Protocol):
    """Given the conversation so far, the next assistant message with its tokens and logprobs.

    `prefix_token_ids` are the exact tokens of the conversation up to and including the last
    assistant message, as sampled; a token-exact policy extends them with the new messages instead
    of rendering the whole conversation again. `task` lets scripted policies (reference, replay) know
    what they are solving; a model never sees it.
    """

    name: str

    def act(
        self,
        messages: list[Message],
        *,
        task: Task | None = None,
        prefix_token_ids: list[int] | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> PolicyOutput: ...


# -- trajectories --------------------------------------------------------------------------------
Termination = Literal["submitted", "out_of_turns", "out_of_context", "policy_error", "env_error", "crashed"]


class TrajectoryMessage(BaseModel):
    """One message of an episode, with the tokens the policy saw or sampled for it.

    Assistant messages carry the sampled `token_ids`, their `logprobs`, the `policy_version` and
    `loss_mask` 1. Every other message has `loss_mask` 0; the last message before an assistant turn
    holds the prompt tokens added since the previous assistant turn (the chat template's framing of
    all the messages in between and the generation prompt), so the concatenation of every message's
    `token_ids` is exactly the token sequence the model processed.
    """

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    loss_mask: int = 0
    policy_version: int | None = None
    finish_reason: str | None = None
    action: dict[str, Any] | None = Field(default=None, validation_alias=AliasChoices("action", "tool_call"))
    """The parsed action of an assistant message: `{"name", "arguments"}`, or None when malformed.
    Files written before the rename call it `tool_call`; they still load."""
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI function calls as the model returned them (function-calling format only)."""
    tool_call_id: str | None = None
    action_error: str | None = None
    """Why an assistant message's action could not be carried out (its observation says the same)."""
    retokenized: bool = False
    """The prompt tokens the backend reported do not extend the previous turn's tokens: the backend
    rendered the conversation again, so this turn's prefix is not what earlier turns sampled."""

    def chat(self) -> Message:
        """The message as the OpenAI chat API takes it."""
        message: Message = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


class Trajectory(BaseModel):
    """One episode: the messages and tokens, the reward, how it ended and what it cost.

    One JSON object per line in a trajectory file (`to_json` / `from_json` round-trip).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    trajectory_id: str
    """`{task_id}#{sample}`: unique per (task, sample) pair in a collection."""
    task_id: str
    sample: int = 0
    repo: str = ""
    kind: str = ""
    policy: dict[str, Any] = Field(default_factory=dict)
    """`name`, `model` and anything else that says what produced the actions."""
    messages: list[TrajectoryMessage] = Field(default_factory=list)
    termination: Termination = "crashed"
    error: str | None = None
    reward: float = 0.0
    resolved: bool = False
    reward_details: dict[str, Any] = Field(default_factory=dict)
    diff: str = ""
    num_turns: int = 0
    prompt_tokens: int = 0
    """Tokens in the last prompt (the context the episode ended with)."""
    completion_tokens: int = 0
    """Tokens sampled over the whole episode."""
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds spent: `reset`, `policy`, `env` (tool calls), `grade`, `total`."""
    started_at: str = ""
    finished_at: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def trainable(self) -> bool:
        """Every assistant turn has its sampled tokens and logprobs, and no prefix was rendered again."""
        turns = [m for m in self.messages if m.role == "assistant"]
        return bool(turns) and all(
            m.token_ids is not None and m.logprobs is not None and not m.retokenized for m in turns)

    def actions(self) -> list[dict[str, Any]]:
        """The parsed tool calls, in order (a malformed action is `{"name": "<malformed>", ...}`)."""
        return [m.action or {"name": "<malformed>", "arguments": {"text": m.content}}
                for m in self.messages if m.role == "assistant"]

    def token_sequence(self) -> tuple[list[int], list[int], list[float]]:
        """(token ids, loss mask, logprobs) of the whole episode; logprob 0.0 where nothing was sampled.

        Raises ValueError when a message's tokens are unknown (a text-only policy) or when a turn's
        prompt was rendered again by the backend (`retokenized`): then no single sequence is exact.
        """
        ids: list[int] = []
        mask: list[int] = []
        logprobs: list[float] = []
        for message in self.messages:
            if message.retokenized:
                raise ValueError(f"{self.trajectory_id}: a turn's prompt was rendered again by the backend")
            if message.token_ids is None:
                if message.role == "assistant":
                    raise ValueError(f"{self.trajectory_id}: an assistant turn has no token ids (text-only policy)")
                continue
            ids += message.token_ids
            mask += [message.loss_mask] * len(message.token_ids)
            logprobs += message.logprobs if message.logprobs is not None else [0.0] * len(message.token_ids)
        return ids, mask, logprobs

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, line: str) -> Trajectory:
        return cls.model_validate_json(line)
