"""Host-side git: one way to run it, and the fixed identity that makes commits reproducible."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from forager.core import ForagerError

FIXED_IDENTITY: dict[str, str] = {
    "GIT_AUTHOR_NAME": "Forager", "GIT_AUTHOR_EMAIL": "forager@localhost", "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Forager", "GIT_COMMITTER_EMAIL": "forager@localhost",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
}
"""Author, committer, dates and no user or system config: the same files always give the same commit id."""


def git_command(
    cwd: Path | str | None, *args: str, env: Mapping[str, str] | None = None,
    config: Mapping[str, str] | None = None, errors: str = "strict",
) -> subprocess.CompletedProcess[str]:
    """Run `git -C cwd [-c k=v ...] args` and return the finished process, whatever its exit code.

    `env` is added to this process's environment; `errors` is how undecodable output is read.
    """
    where = ["-C", str(cwd)] if cwd is not None else []
    options = [word for key, value in (config or {}).items() for word in ("-c", f"{key}={value}")]
    return subprocess.run(["git", *where, *options, *args], capture_output=True, text=True, errors=errors,
                          env={**os.environ, **env} if env is not None else None)


def run_git(
    cwd: Path | str, *args: str, env: Mapping[str, str] | None = None, config: Mapping[str, str] | None = None,
    errors: str = "strict",
) -> str:
    """The standard output of `git args` in `cwd`; a ForagerError naming the command and git's error if it fails."""
    result = git_command(cwd, *args, env=env, config=config, errors=errors)
    if result.returncode != 0:
        raise ForagerError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout
