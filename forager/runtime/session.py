"""One persistent bash process per episode, driven over a byte stream.

Every command is sent as a single line, `eval $'<command>' </dev/null; printf '<nonce>%d\\n' $? >&63`,
so the working directory, variables and functions persist between commands, nothing waits on
stdin, a syntax error in the command cannot swallow the end marker, and no process is started
per command beyond what the command itself starts. The marker goes to fd 63, a copy of the
session's output made at start: a command that redirects the shell's own output (`exec >/dev/null
2>&1`) cannot send the marker nowhere. After each command the shell checks that its stdout and
stderr are still the session's; if not, it puts them back and the observation says so. The shell runs with `set -m` so each
foreground job gets its own process group, which a timeout kills without touching the shell.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Protocol

from forager.core import DEFAULT_MAX_OUTPUT_BYTES, ForagerError, Observation

# Nothing may wait on a terminal: pagers print, editors return at once, tools do not prompt.
SESSION_ENV = {
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "MANPAGER": "cat",
    "SYSTEMD_PAGER": "",
    "LESS": "-FRX",
    "EDITOR": "true",
    "VISUAL": "true",
    "GIT_EDITOR": "true",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "TERM": "dumb",
    "NO_COLOR": "1",
    "PIP_NO_INPUT": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "DEBIAN_FRONTEND": "noninteractive",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "LC_ALL": "C.UTF-8",
}

# Kills what a timed-out command started and nothing older: every process of the shell's session
# (but the shell) that started after the command was sent. Background jobs from earlier commands
# survive. Pure POSIX sh over /proc, so it needs no procps in the image.
# Arguments: shell pid, the command's start as /proc/uptime centiseconds (clock ticks).
KILL_JOBS_SCRIPT = r"""
s=$1; t=$2
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = "$s" ] && continue
  { read -r l < "$d/stat"; } 2>/dev/null || continue
  set -- ${l##*) }
  [ "$4" = "$s" ] || continue
  g=$3; shift 19
  [ "$1" -ge "$t" ] 2>/dev/null || continue
  if [ "$g" != "$s" ]; then kill -9 "-$g" 2>/dev/null; else kill -9 "$p" 2>/dev/null; fi
done
exit 0
"""

MARKER_FD = 63
"""Where the end marker goes: a copy of the session's output that `exec >...` in a command leaves alone."""

# After the command: note its status, put back stdout/stderr if the command redirected the shell's
# own (`R` before the status says so), and print the end marker to the saved copy.
_END = (
    "__forager_rc=$?; __forager_fd=; "
    f"if [ -e /dev/fd/{MARKER_FD} ] && ! {{ [ /dev/fd/1 -ef /dev/fd/{MARKER_FD} ] && "
    f"[ /dev/fd/2 -ef /dev/fd/{MARKER_FD} ]; }}; then exec 1>&{MARKER_FD} 2>&1; __forager_fd=R; fi; "
    f"printf '{{nonce}}%s%d\\n' \"$__forager_fd\" \"$__forager_rc\" >&{MARKER_FD}"
)

_ANSI_C_ESCAPES = {ord("\\"): b"\\\\", ord("'"): b"\\'", ord("\n"): b"\\n", ord("\t"): b"\\t"}
_NEEDS_ESCAPE = re.compile(rb"[^\x20-\x7e]|[\\']")


def ansi_c_quote(data: bytes) -> bytes:
    """Quote bytes as a bash `$'...'` word (NUL bytes cannot live in a bash string and are dropped)."""

    def escape(match: re.Match[bytes]) -> bytes:
        byte = match[0][0]
        return _ANSI_C_ESCAPES.get(byte) or (b"" if byte == 0 else b"\\x%02x" % byte)

    return b"$'" + _NEEDS_ESCAPE.sub(escape, data) + b"'"


class Transport(Protocol):
    """A running bash process: bytes in, merged output out, and the means to kill what it runs."""

    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float) -> bytes | None:
        """Output that arrived within `timeout` seconds; None if nothing did; b'' once the shell is gone."""
        ...

    def kill_jobs(self, shell_pid: int, since_ticks: int) -> bool:
        """Kill what the shell's session started since `since_ticks` (uptime, 1/100 s); False if that failed."""
        ...

    def close(self, hard: bool = False) -> int | None:
        """Stop the shell (kill it if needed) and return its exit status when known. Idempotent.

        `hard`: the shell did not answer a kill; also stop everything it may have left running.
        """
        ...


class OutputBuffer:
    """Collects a command's output, keeping only its head and tail once it grows past `limit` bytes."""

    def __init__(self, limit: int, marker: bytes) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.marker = marker
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self._slack = len(marker) + 32

    def feed(self, chunk: bytes) -> int:
        """Add output; return the index in `self.tail` where the end marker starts, or -1."""
        search_from = max(0, len(self.tail) - self._slack)
        self.tail += chunk
        found = self.tail.find(self.marker, search_from)
        if found >= 0:
            return found
        if len(self.head) < self.head_limit:
            take = min(self.head_limit - len(self.head), max(0, len(self.tail) - self._slack))
            self.head += self.tail[:take]
            del self.tail[:take]
        excess = len(self.tail) - (self.tail_limit + self._slack)
        if excess > 0 and len(self.head) >= self.head_limit:
            del self.tail[:excess]
            self.dropped += excess
        return -1

    def result(self, end: int) -> tuple[str, bool]:
        """The output before `end` in the tail, decoded, and whether anything was left out."""
        body = bytes(self.head) + bytes(self.tail[:end])
        total = len(body) + self.dropped
        limit = self.head_limit + self.tail_limit
        if total <= limit:
            return body.decode("utf-8", errors="replace"), False
        head, tail = body[: self.head_limit], body[len(body) - self.tail_limit :]
        omitted = total - len(head) - len(tail)
        note = f"\n[... {omitted:,} bytes of output omitted ({total:,} in all) ...]\n"
        text = head.decode("utf-8", errors="replace") + note + tail.decode("utf-8", errors="replace")
        return text, True


class BashSession:
    """A persistent bash over a Transport; restarts itself (and says so) when the shell dies."""

    def __init__(
        self,
        open_transport: Callable[[], Transport],
        workdir: str,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        startup_timeout: float = 30.0,
        kill_grace_s: float = 3.0,
        recover: Callable[[], None] | None = None,
    ) -> None:
        self._open_transport = open_transport
        self._recover = recover
        """Called once when a new shell cannot start (say, a fork bomb holds every pid) before retrying."""
        self.workdir = workdir
        self.max_output_bytes = max_output_bytes
        self.startup_timeout = startup_timeout
        self.kill_grace_s = kill_grace_s
        self._transport: Transport | None = None
        self.shell_pid: int | None = None
        self._uptime_offset: float | None = None  # the shell's /proc/uptime minus our monotonic clock
        self._restart_note: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the shell and wait until it answers."""
        transport = self._open_transport()
        token = secrets.token_hex(8)
        exports = " ".join(f"{k}={_shell_word(v)}" for k, v in SESSION_ENV.items())
        init = (
            f"exec 2>&1 {MARKER_FD}>&1; set -m; set +o history; export {exports}; unset PROMPT_COMMAND; "
            f"{{ read -r up _ </proc/uptime; }} 2>/dev/null; cd {_shell_word(self.workdir)} && "
            f"printf 'READY{token} %d %s\\n' $$ \"${{up:-none}}\"; unset up\n"
        )
        transport.send(init.encode())
        marker = f"READY{token} ".encode()
        buf = bytearray()
        deadline = time.monotonic() + self.startup_timeout
        while (m := re.search(re.escape(marker) + rb"(\d+) (\S+)\n", buf)) is None:
            remaining = deadline - time.monotonic()
            chunk = transport.recv(remaining) if remaining > 0 else None
            if not chunk:
                transport.close()
                why = "timed out" if chunk is None else "exited"
                raise RuntimeError(
                    f"the bash session {why} while starting in {self.workdir!r}: "
                    f"{bytes(buf).decode(errors='replace').strip() or 'no output'}"
                )
            buf += chunk
        self.shell_pid = int(m[1])
        try:
            self._uptime_offset = float(m[2]) - time.monotonic()
        except ValueError:  # no /proc: a timeout then kills every job of the session
            self._uptime_offset = None
        self._transport = transport

    @property
    def alive(self) -> bool:
        return self._transport is not None

    def close(self, hard: bool = False) -> int | None:
        transport, self._transport = self._transport, None
        return transport.close(hard) if transport is not None else None

    def _died(self, note: str) -> None:
        self.close(hard=True)
        self._restart_note = note

    # -- commands --------------------------------------------------------------------------------
    def run(
        self, command: str, timeout: float, max_output_bytes: int | None = None, internal: bool = False
    ) -> Observation:
        """Run one command in the shell; a failure or a timeout is an observation, never an exception.

        `internal` commands (Forager's own file reads and diffs) leave a pending restart notice for
        the agent's next command instead of taking it.
        """
        self._ensure_shell()
        restarted_note = None
        if self._restart_note is not None and not internal:
            restarted_note, self._restart_note = self._restart_note, None
        transport = self._transport
        assert transport is not None and self.shell_pid is not None

        nonce = f"__FORAGER_{secrets.token_hex(8)}__"
        line = b"eval " + ansi_c_quote(command.encode()) + b" </dev/null; " + _END.replace("{nonce}", nonce).encode() + b"\n"
        buffer = OutputBuffer(max_output_bytes or self.max_output_bytes, nonce.encode())
        started = time.monotonic()
        transport.send(line)
        notes = [restarted_note] if restarted_note else []
        end, exit_code, timed_out = self._await_command(transport, buffer, started, timeout, notes)
        output, truncated = buffer.result(end)
        return Observation(
            output=output,
            exit_code=exit_code,
            timed_out=timed_out,
            truncated=truncated,
            session_restarted=restarted_note is not None,
            duration_s=time.monotonic() - started,
            notes=notes,
        )

    def _ensure_shell(self) -> None:
        if self._transport is not None:
            return
        try:
            self.start()
        except ForagerError:
            raise  # the runtime itself is gone (say, its container was removed): nothing to retry
        except Exception:
            if self._recover is None:
                raise
            self._recover()
            self.start()

    def _await_command(
        self, transport: Transport, buffer: OutputBuffer, started: float, timeout: float, notes: list[str]
    ) -> tuple[int, int | None, bool]:
        """Read output up to the command's end marker, killing it at the deadline: (end, exit code, timed out).

        What happened to the command or the shell on the way is appended to `notes`.
        """
        timed_out = False
        deadline = started + timeout
        while True:
            now = time.monotonic()
            if not timed_out and now >= deadline:
                timed_out = True
                deadline = now + self.kill_grace_s
                # Exact to a clock tick (10 ms): a job started in the tick before this command may go too.
                since = 0 if self._uptime_offset is None else int((started + self._uptime_offset) * 100)
                if not transport.kill_jobs(self.shell_pid, since):
                    deadline = now  # could not reach the processes: restart the shell below
                continue
            if timed_out and now >= deadline:
                # The command is a shell builtin loop, or its processes could not be killed.
                self._died("the previous command timed out and its shell had to be restarted")
                notes.append(
                    f"command timed out after {timeout:g}s; the shell was restarted "
                    f"(working directory, variables and background jobs were lost)"
                )
                return len(buffer.tail), None, True
            chunk = transport.recv(deadline - now)
            if chunk is None:
                continue
            if chunk == b"":
                status = transport.close()
                self._transport = None
                self._restart_note = "the previous shell session ended; this command ran in a new one"
                code = "unknown" if status is None else str(status)
                notes.append(f"the shell session ended (exit status {code}); the next command starts a fresh one in {self.workdir}")
                return len(buffer.tail), status, timed_out
            end = buffer.feed(chunk)
            if end >= 0:
                if timed_out:
                    notes.append(f"command timed out after {timeout:g}s: its processes were killed")
                status, redirected = self._exit_status(transport, buffer, end, deadline)
                if redirected:
                    notes.append("the command redirected the shell's own output (exec >...); "
                                 "it was put back so that later commands are seen")
                return end, status, timed_out

    @staticmethod
    def _exit_status(transport: Transport, buffer: OutputBuffer, end: int, deadline: float) -> tuple[int | None, bool]:
        """The status the shell prints after the end marker (waiting for it if need be), and whether
        the command had redirected the shell's output (`R` before the digits)."""
        while (m := re.match(rb"(R?)(-?\d+)\n", bytes(buffer.tail[end + len(buffer.marker) :]))) is None:
            more = transport.recv(max(0.05, deadline - time.monotonic()))
            if not more:
                break
            buffer.tail += more
        return (int(m[2]), bool(m[1])) if m else (None, False)

    def run_checked(self, command: str, timeout: float = 60.0, max_output_bytes: int = 1 << 30) -> str:
        """Run a Forager-internal command whose failure is an error, not an observation; no truncation."""
        obs = self.run(command, timeout, max_output_bytes, internal=True)
        if not obs.ok:
            raise RuntimeError(f"command failed ({obs.exit_code}): {command}\n{obs.output}")
        return obs.output


def _shell_word(value: str) -> str:
    return ansi_c_quote(value.encode()).decode()
