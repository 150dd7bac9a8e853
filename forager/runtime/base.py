"""What every shell-backed runtime shares: commands through one BashSession, files, diffs, cleanup."""

from __future__ import annotations

import atexit
import base64
import os
import signal
import socket
import threading
import uuid
from abc import ABC, abstractmethod
from typing import Any

from forager.core import DEFAULT_COMMAND_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES, Observation
from forager.runtime.session import BashSession, Transport, ansi_c_quote

# Containers and directories carry these, so `forager gc` can find what a dead process left behind.
LABEL = "forager"
RUN_ID = uuid.uuid4().hex[:12]


def bash_quote(value: str) -> str:
    """A bash word that expands to exactly `value`."""
    return ansi_c_quote(value.encode()).decode()


def process_start_ticks(pid: int) -> str:
    """A process's start time (Linux clock ticks since boot), so a recycled pid is not mistaken for its owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_labels() -> dict[str, str]:
    pid = os.getpid()
    return {
        LABEL: "1",
        f"{LABEL}.run": RUN_ID,
        f"{LABEL}.owner.pid": str(pid),
        f"{LABEL}.owner.start": process_start_ticks(pid),
        f"{LABEL}.owner.host": socket.gethostname(),
    }


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the process named by `owner_labels()` still runs (on this host)."""
    if labels.get(f"{LABEL}.owner.host") != socket.gethostname():
        return True  # not ours to judge; `forager gc --all` removes those too
    try:
        pid = int(labels.get(f"{LABEL}.owner.pid", ""))
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    start = labels.get(f"{LABEL}.owner.start", "")
    return not start or process_start_ticks(pid) == start


class _LiveRuntimes:
    """Closes every open runtime at interpreter exit and on SIGTERM/SIGHUP (SIGINT unwinds normally)."""

    def __init__(self) -> None:
        self._open: dict[int, ShellRuntime] = {}
        self._lock = threading.Lock()
        self._hooked = False

    def add(self, runtime: ShellRuntime) -> None:
        with self._lock:
            self._open[id(runtime)] = runtime
            if not self._hooked:
                self._hooked = True
                atexit.register(self.close_all)
                if threading.current_thread() is threading.main_thread():
                    for sig in (signal.SIGTERM, signal.SIGHUP):
                        if signal.getsignal(sig) in (signal.SIG_DFL, None):
                            signal.signal(sig, self._on_signal)

    def discard(self, runtime: ShellRuntime) -> None:
        with self._lock:
            self._open.pop(id(runtime), None)

    def close_all(self) -> None:
        with self._lock:
            runtimes = list(self._open.values())
        for runtime in runtimes:
            try:
                runtime.close()
            except Exception:  # noqa: BLE001 - best effort while the process goes down
                pass

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.close_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


live_runtimes = _LiveRuntimes()


class ShellRuntime(ABC):
    """The Runtime seam: a repository at `workdir` and a persistent shell in it.

    Everything above the runtime floor (env, tools, harness, grading, task checkout) types against
    this class. A new runtime subclasses it and says where the shell runs (`_open_transport`), what
    to free (`_release`), and how to open one for a task (`for_task`, used by `runtime.registry`).
    """

    workdir: str

    def __init__(self, workdir: str, command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
                 max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.workdir = workdir
        self.command_timeout = command_timeout
        self.max_output_bytes = max_output_bytes
        self._closed = False
        self.session = BashSession(
            self._open_transport, workdir, max_output_bytes=max_output_bytes, recover=self._recover_shell
        )
        live_runtimes.add(self)

    def _start_session(self) -> None:
        """Start the shell (subclasses call this once their resources exist); on failure release them."""
        try:
            self.session.start()
        except BaseException:
            self.close()
            raise

    @abstractmethod
    def _open_transport(self) -> Transport: ...

    def _recover_shell(self) -> None:
        """Make room for a new shell when one cannot start; the default has nothing to try."""
        raise RuntimeError("the shell could not be restarted")

    @abstractmethod
    def _release(self) -> None:
        """Free what the runtime holds (container, scratch directory); called once by close()."""

    # -- the Runtime seam ------------------------------------------------------------------------
    def run(self, command: str, timeout: float | None = None) -> Observation:
        self._check_open()
        return self.session.run(command, timeout or self.command_timeout)

    def run_checked(self, command: str, timeout: float = 120.0) -> str:
        """Run an internal command in a subshell at the repository root; raise if it fails."""
        self._check_open()
        # The newline lets `command` end with a here-document.
        return self.session.run_checked(f"(cd {bash_quote(self.workdir)} && {command}\n)", timeout)

    def read_file(self, path: str) -> str:
        """The file's text (bad bytes replaced). Raises FileNotFoundError or IsADirectoryError."""
        path = self.abspath(path)
        self._check_open()
        obs = self.session.run(
            f"( [ -d {bash_quote(path)} ] && exit 3; exec cat -- {bash_quote(path)} )", 60, max_output_bytes=1 << 30,
            internal=True,
        )
        if obs.exit_code == 3:
            raise IsADirectoryError(path)
        if not obs.ok:
            raise FileNotFoundError(path)
        return obs.output

    def write_file(self, path: str, content: str) -> None:
        self.run_checked(self.write_command(path, content))

    def write_command(self, path: str, content: str) -> str:
        """A shell command that writes `content` to `path` (to batch it with others in one round trip)."""
        path = self.abspath(path)
        data = ansi_c_quote(content.encode()).decode()
        return f"mkdir -p -- \"$(dirname -- {bash_quote(path)})\" && printf '%s' {data} > {bash_quote(path)}"

    def put_file(self, path: str, data: bytes, chunk: int = 1 << 16) -> None:
        """Write bytes (a wheel, a tool) at `path`, through the shell as base64 in chunks."""
        path = self.abspath(path)
        encoded = base64.b64encode(data).decode()
        self.run_checked(f"mkdir -p -- \"$(dirname -- {bash_quote(path)})\" && : > {bash_quote(path)}.b64")
        for start in range(0, len(encoded), chunk):
            self.run_checked(f"printf '%s' '{encoded[start:start + chunk]}' >> {bash_quote(path)}.b64")
        self.run_checked(f"base64 -d {bash_quote(path)}.b64 > {bash_quote(path)} && rm -f {bash_quote(path)}.b64")

    def diff(self, base: str = "HEAD") -> str:
        """Changes of the working tree (new files included) against `base`, without touching the index.

        The index is copied with its mtime (`cp -p`): git trusts an entry's stat only when the entry
        is older than the index file, so a fresh mtime would hide a same-size edit made in the
        second the index was written (racy git).
        """
        return self.run_checked(
            "idx=$(mktemp) && { cp -p .git/index \"$idx\" 2>/dev/null || true; } && "
            "export GIT_INDEX_FILE=\"$idx\" && unset GIT_DIR GIT_WORK_TREE && git add -A && "
            f"git -c core.quotepath=false diff --cached --binary {bash_quote(base)}; rc=$?; rm -f \"$idx\"; exit $rc"
        )

    def abspath(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.workdir.rstrip('/')}/{path}"

    def close(self) -> None:
        """Stop the shell and free everything; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.session.close()
        finally:
            try:
                self._release()
            finally:
                live_runtimes.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new runtime")

    def __enter__(self) -> ShellRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
