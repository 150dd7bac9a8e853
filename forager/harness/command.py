"""A task's pytest command, and the shell command that runs the in-container runner with a request."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from forager.runtime.base import bash_quote

_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class PytestCommand:
    """A task's test command split into its interpreter, environment and pytest options."""

    python: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, command: str) -> PytestCommand | None:
        """`[VAR=x ...] python -m pytest ARGS` or `[VAR=x ...] pytest ARGS`; None for anything else."""
        try:
            words = shlex.split(command)
        except ValueError:
            return None
        env = []
        while words and _ENV_ASSIGNMENT.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            env.append((name, value))
        if len(words) >= 3 and re.fullmatch(r"(.*/)?python[0-9.]*", words[0]) and words[1:3] == ["-m", "pytest"]:
            return cls(words[0], tuple(words[3:]), tuple(env))
        if words and re.fullmatch(r"(.*/)?(py\.test|pytest)", words[0]):
            return cls("python", tuple(words[1:]), tuple(env))
        return None

    def env_prefix(self) -> str:
        return "".join(f"{name}={bash_quote(value)} " for name, value in self.env)


def runner_command(
    command: PytestCommand, workdir: str, script: str, mode: str, request: dict, *, isolated: bool = False,
    log: str | None = None, pythonpath: str | None = None,
) -> str:
    """The shell command that runs the runner `script` in `mode`, the request on stdin (never in argv)."""
    flags = "-I " if isolated else ""
    output = f"> {bash_quote(log)} 2>&1" if log else "2>&1"
    extra = ""
    if pythonpath:  # in front of the task's own PYTHONPATH (its command's, or the image's)
        own = dict(command.env).get("PYTHONPATH")
        extra = f"PYTHONPATH={bash_quote(f'{pythonpath}:{own}')} " if own else \
            f"PYTHONPATH={bash_quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}} "
    return (
        f"cd {bash_quote(workdir)} && {command.env_prefix()}{extra}PYTHONDONTWRITEBYTECODE=1 "
        f"{command.python} {flags}{script} {mode} {output} <<'FORAGER_REQUEST'\n"
        f"{json.dumps(request)}\nFORAGER_REQUEST"
    )
