"""LocalRuntime: a persistent bash in a scratch clone of a local git repository.

It does NOT isolate: commands run as you, with your network and your files. It is the embedded
default when no Docker engine answers, for trying Forager out and for tests of the tools.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from forager.core import DEFAULT_COMMAND_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES, RuntimeUnavailable, Task
from forager.git import git_command
from forager.runtime.base import ShellRuntime, live_runtimes, owner_labels
from forager.runtime.session import KILL_JOBS_SCRIPT
from forager.runtime.trusted_git import DIFF_TIMEOUT_S, TRUSTED_ENV, host_diff_command

SCRATCH_PREFIX = "forager-local-"
OWNER_FILE = "forager-owner.json"


class PipeTransport:
    """bash as a child process in its own session, its stderr merged into stdout."""

    def __init__(self, cwd: str, env: dict[str, str] | None = None) -> None:
        self._proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True, bufsize=0,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin = self._proc.stdin
        self._fd = self._proc.stdout.fileno()

    def send(self, data: bytes) -> None:
        try:
            self._stdin.write(data)
        except (BrokenPipeError, OSError):
            pass  # the shell is gone; recv() reports it

    def recv(self, timeout: float) -> bytes | None:
        if not select.select([self._fd], [], [], max(0.0, timeout))[0]:
            return None
        return os.read(self._fd, 1 << 18)

    def kill_jobs(self, shell_pid: int, since_ticks: int) -> bool:
        if not os.path.isdir("/proc"):
            return False  # no /proc to find the jobs in: the session restarts instead
        result = subprocess.run(
            ["sh", "-c", KILL_JOBS_SCRIPT, "sh", str(shell_pid), str(since_ticks)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        return result.returncode == 0

    def close(self, hard: bool = False) -> int | None:
        if os.path.isdir("/proc"):
            self.kill_jobs(self._proc.pid, 0)  # every job of the session, background ones included
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # the shell and whatever it left running
            except ProcessLookupError:
                pass
        status = self._proc.wait()
        for stream in (self._stdin, self._proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        return status if status >= 0 else 128 - status


class LocalRuntime(ShellRuntime):
    """A scratch clone of `repo` under the temp directory, removed on close() (or by `forager gc`)."""

    def __init__(
        self, repo: str | os.PathLike[str], *, command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> None:
        self.source = Path(repo).resolve()
        if not (self.source / ".git").exists():
            raise RuntimeUnavailable(f"{self.source} is not a git repository (the local runtime clones one)")
        with live_runtimes.creating():  # refused once the process is going down; waited for by its handler
            self._create(command_timeout, max_output_bytes)

    def _create(self, command_timeout: float, max_output_bytes: int) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
        (self.scratch / OWNER_FILE).write_text(json.dumps(owner_labels()))
        # The host's /tmp is shared by every runtime on it: fixed scratch names there would collide.
        (self.scratch / "tmp").mkdir()
        self.scratch_dir = str(self.scratch / "tmp")
        try:
            self._clone()
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        super().__init__(str(self.scratch / "repo"), command_timeout, max_output_bytes)
        self._start_session()

    @classmethod
    def for_task(cls, task: Task, *, command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
                 max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, **_: Any) -> LocalRuntime:
        """A scratch clone of the task's local_repo (Docker's limits, pool and client do not apply)."""
        if not task.local_repo:
            raise RuntimeUnavailable(f"task {task.instance_id} has no local_repo for the local runtime")
        return cls(task.local_repo, command_timeout=command_timeout, max_output_bytes=max_output_bytes)

    def _clone(self) -> None:
        result = git_command(None, "clone", "-q", "--no-hardlinks", str(self.source), str(self.scratch / "repo"))
        if result.returncode != 0:
            raise RuntimeUnavailable(f"could not clone {self.source}: {result.stderr.strip()}")
        git_command(self.scratch / "repo", "remote", "remove", "origin", errors="replace")  # its result does not matter

    def _open_transport(self) -> PipeTransport:
        # mktemp, tempfile and the tests' own temporary files land in the runtime's scratch too
        return PipeTransport(self.workdir, {**os.environ, "TMPDIR": self.scratch_dir})

    def _trusted_diff(self, base: str) -> tuple[int, bytes, bytes]:
        """The diff by a host subprocess with a clean environment, not through the agent's shell."""
        try:
            proc = subprocess.run(host_diff_command(self.workdir, base), env=TRUSTED_ENV, cwd="/",
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=DIFF_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return 124, b"", b"the diff timed out"
        return proc.returncode, proc.stdout, proc.stderr

    def reset(self) -> None:
        """A fresh clone and a fresh shell."""
        self._check_open()
        self.session.close()
        shutil.rmtree(self.scratch / "repo", ignore_errors=True)
        self._clone()
        if self.closed:  # closed by another thread (a shutdown) while cloning: what the clone made goes too
            shutil.rmtree(self.scratch, ignore_errors=True)
            self._check_open()
        self.session.start()

    def _release(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def _sweep_own_scratch() -> None:
    """At exit or on a signal, after every runtime was closed: scratch directories this process still owns.

    A worker thread may be re-cloning (reset) while the shutdown closes its runtime; what it leaves
    behind goes here instead of waiting for `forager gc`.
    """
    me = owner_labels()
    for scratch in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            labels = json.loads((scratch / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if all(labels.get(key) == value for key, value in me.items() if "owner" in key):
            shutil.rmtree(scratch, ignore_errors=True)


live_runtimes.sweepers.append(_sweep_own_scratch)
