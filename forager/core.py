"""Types shared by every part of Forager: the Task, the Observation of a command, and the Runtime seam."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

DEFAULT_TEST_COMMAND = "python -m pytest -rA -p no:cacheprovider -o console_output_style=classic"


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


def load_tasks(
    path: str | Path,
    split: str = "test",
    format: Literal["auto", "forager", "swebench", "swe-smith"] = "auto",
    image: str | None = None,
) -> list[Task]:
    """Read tasks from a file, a dataset directory or a hub dataset: see `forager.tasks.store.load_tasks`."""
    from forager.tasks import store  # imported here: store imports this module

    return store.load_tasks(path, split=split, format=format, image=image)


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


@runtime_checkable
class Runtime(Protocol):
    """Where commands run: a persistent shell in a repository, in a container or a scratch directory."""

    workdir: str

    def run(self, command: str, timeout: float | None = None) -> Observation: ...

    def read_file(self, path: str) -> str: ...

    def write_file(self, path: str, content: str) -> None: ...

    def diff(self, base: str = "HEAD") -> str: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Runtime: ...

    def __exit__(self, *exc: object) -> None: ...
