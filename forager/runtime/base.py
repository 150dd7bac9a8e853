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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from forager.core import DEFAULT_COMMAND_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES, Observation, RuntimeUnavailable
from forager.runtime.session import BashSession, Transport, ansi_c_quote
from forager.runtime.trusted_git import BASE_REF

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
    """Closes every open runtime at interpreter exit and on SIGTERM/SIGHUP (SIGINT unwinds normally).

    On a signal nothing new may start: resources being created on other threads are waited for
    (the engine would finish creating a container after the process is gone), then every runtime
    is closed and each `sweeper` (say, Docker's: remove whatever this process still owns) runs to
    the end before the signal's default action ends the process.
    """

    def __init__(self) -> None:
        self._open: dict[int, ShellRuntime] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._creating: dict[int, int] = {}  # thread id -> creations in flight
        self._deferred: int | None = None  # a signal that came while the main thread was creating
        self.stopping = False
        self.sweepers: list[Callable[[], None]] = []
        self._hooked_exit = False
        self._hooked_signals = False

    def hook(self) -> None:
        """Register the exit and signal handlers (signals only from the main thread; retried on each add)."""
        if not self._hooked_exit:
            self._hooked_exit = True
            atexit.register(self.shutdown)
        if not self._hooked_signals and threading.current_thread() is threading.main_thread():
            self._hooked_signals = True
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, self._on_signal)

    def add(self, runtime: ShellRuntime) -> None:
        with self._lock:
            self._open[id(runtime)] = runtime
        self.hook()

    def discard(self, runtime: ShellRuntime) -> None:
        with self._lock:
            self._open.pop(id(runtime), None)

    @contextmanager
    def creating(self) -> Iterator[None]:
        """Around the creation of an external resource: refused once the process is going down."""
        me = threading.get_ident()
        with self._lock:
            if self.stopping:
                raise RuntimeUnavailable("the process is shutting down: no new runtime starts")
            self._creating[me] = self._creating.get(me, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._creating[me] -= 1
                if not self._creating[me]:
                    del self._creating[me]
                self._changed.notify_all()
                deferred = self._deferred if me not in self._creating else None
            if deferred is not None and threading.current_thread() is threading.main_thread():
                self._on_signal(deferred, None)  # now that what this thread created is known

    def close_all(self) -> None:
        with self._lock:
            runtimes = list(self._open.values())
        for runtime in runtimes:
            try:
                runtime.close()
            except Exception:  # noqa: BLE001 - best effort while the process goes down
                pass

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Stop new creations, wait for those in flight elsewhere, close everything, run the sweepers."""
        me = threading.get_ident()
        with self._lock:
            self.stopping = True
            self._changed.wait_for(lambda: not (set(self._creating) - {me}), timeout=wait_s)
        self.close_all()
        for sweep in list(self.sweepers):
            try:
                sweep()
            except Exception:  # noqa: BLE001 - `forager gc` is the last resort
                pass

    def _on_signal(self, signum: int, _frame: Any) -> None:
        with self._lock:
            if threading.get_ident() in self._creating:
                # The main thread was interrupted inside a creation: finish it first, so the
                # resource is known and removed (see `creating`).
                self._deferred = signum
                self.stopping = True
                return
        self.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


live_runtimes = _LiveRuntimes()
live_runtimes.hook()  # at import, which is most often on the main thread: runtimes opened on workers are covered too


@dataclass(frozen=True)
class Preparation:
    """Work that puts a fresh runtime in a known state (a task's checkout), and the name of that state.

    A warm pool runs it ahead of time on runtimes nobody holds yet (`WarmPool.expect`); whoever
    takes one calls `prepared(runtime, preparation)` and gets the result without waiting, or has
    it run there and then when the runtime came unprepared. Two preparations with the same `key`
    must leave the same state: the key is what the pool matches on.
    """

    key: str
    run: Callable[[ShellRuntime], Any]


def prepared(runtime: ShellRuntime, preparation: Preparation) -> Any:
    """The result of `preparation` on `runtime`: the one it already has, or run now."""
    if runtime.prepared is not None and runtime.prepared[0] == preparation.key:
        return runtime.prepared[1]
    if runtime.prepared is not None:
        raise RuntimeError(f"the runtime was prepared as {runtime.prepared[0]!r}, not {preparation.key!r}")
    result = preparation.run(runtime)
    runtime.prepared = (preparation.key, result)
    return result


class ShellRuntime(ABC):
    """The Runtime seam: a repository at `workdir` and a persistent shell in it.

    Everything above the runtime floor (env, tools, harness, grading, task checkout) types against
    this class. A new runtime subclasses it and says where the shell runs (`_open_transport`), what
    to free (`_release`), and how to open one for a task (`for_task`, used by `runtime.registry`).
    """

    workdir: str
    scratch_dir: str = "/tmp"
    """Where Forager's own scratch files go (patches, test reports): private to this runtime. A
    container's /tmp is its own; a runtime that shares the host's sets a directory of its own."""
    prepared: tuple[str, Any] | None = None
    """(`Preparation.key`, its result) once a preparation ran here (ahead of time, in a warm pool)."""

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

    def scratch_path(self, name: str) -> str:
        """`scratch_dir/forager-NAME`: a fixed name is safe there, as no other runtime writes to it."""
        return f"{self.scratch_dir}/forager-{name}"

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
        """Changes of the working tree (new files included) against `base`, as Forager's own git sees them.

        Never through the agent's shell: a `git` function, alias or variable there would decide
        what is graded. `_trusted_diff` runs `runtime.trusted_git`'s script in a process of its own,
        with a fresh index built from `base`, so the agent's index and `.git/config` do not count.
        """
        if not BASE_REF.match(base):
            raise ValueError(f"not a revision: {base!r}")
        self._check_open()
        code, out, err = self._trusted_diff(base)
        if code != 0:
            raise RuntimeError(f"the diff could not be computed (exit {code}): {err.decode(errors='replace')[-500:]}")
        return out.decode("utf-8", errors="replace")

    def _trusted_diff(self, base: str) -> tuple[int, bytes, bytes]:
        """(exit code, stdout, stderr) of `trusted_git.DIFF_SCRIPT` run outside the session."""
        raise NotImplementedError(f"{type(self).__name__} cannot compute a trusted diff")

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
