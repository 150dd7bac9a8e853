"""Bounded file reads and checked writes for the agent's edit tools, done on the runtime's side.

The agent names the path, so anything may be there: a directory, a device that never ends
(`/dev/zero`), a FIFO that blocks until a writer comes, a 300 MB file, a file the shell may not
write. The checks and the size bound run in the runtime's shell (`head -c` of a regular file
only), so nothing unbounded crosses to the host, and each refusal comes back as an OSError whose
message the tools show the agent.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from forager.runtime.base import ShellRuntime, bash_quote

FILE_TIMEOUT_S = 30.0
"""Reading or writing one file: a regular file on a local disk takes milliseconds."""


class NotRegularFileError(OSError):
    """The path is a device, FIFO or socket: reading it may never end or block, and so may writing."""


@dataclass(frozen=True)
class FileHead:
    """The first bytes of a regular file."""

    data: bytes
    size: int
    """The file's size as the runtime reports it (0 for some /proc files, which still hold text)."""
    truncated: bool
    """True when the file holds more than `data`."""


# Shell snippets over `$p`. Exit statuses 3..14 name why the path was refused; `[ -f ]` follows
# symlinks, so a link to /dev/zero is refused like /dev/zero itself.
_KINDS = {10: "a character device", 11: "a block device", 12: "a FIFO (named pipe)", 13: "a socket",
          14: "not a regular file"}
_CHECK_KIND = (
    'if [ -d "$p" ]; then exit 3; fi; '
    'if [ -e "$p" ] && [ ! -f "$p" ]; then '
    '[ -c "$p" ] && exit 10; [ -b "$p" ] && exit 11; [ -p "$p" ] && exit 12; [ -S "$p" ] && exit 13; exit 14; fi; '
)


def _refusal(path: str, code: int | None, output: str) -> OSError:
    """The OSError for a refused or failed read or write (`code` from the snippets above)."""
    if code == 3:
        return IsADirectoryError(f"{path} is a directory")
    if code == 4:
        return FileNotFoundError(f"{path} does not exist")
    if code in _KINDS:
        return NotRegularFileError(f"{path} is {_KINDS[code]}")
    if code == 6:
        return PermissionError(f"{path} is not readable (permission denied)")
    reason = _shell_reason(output)
    return OSError(f"{path}: {reason}" if reason else f"{path}: failed (exit status {code})")


def _shell_reason(output: str) -> str:
    """`Permission denied` from `bash: line 1: /x: Permission denied` (the last line's last clause)."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1].rsplit(": ", 1)[-1].strip()[:200] if lines else ""


def _checked_path(runtime: ShellRuntime, path: str) -> str:
    if runtime.closed:
        raise RuntimeError(f"{type(runtime).__name__} is closed; create a new runtime")
    if "\0" in path:  # bash would drop it silently and act on another path
        raise ValueError("a path cannot contain a NUL byte")
    return runtime.abspath(path)


def read_head(runtime: ShellRuntime, path: str, max_bytes: int) -> FileHead:
    """At most `max_bytes` of the regular file at `path` (absolute, or relative to the workdir).

    Raises IsADirectoryError, FileNotFoundError, NotRegularFileError, PermissionError, TimeoutError
    or OSError; each message names the path and says why.
    """
    path = _checked_path(runtime, path)
    # base64 carries the bytes exactly (the shell's output is decoded as text), so the caller can
    # tell a binary or non-UTF-8 file from text instead of editing it through replacement chars.
    script = (
        f"( p={bash_quote(path)}; {_CHECK_KIND}"
        '[ -e "$p" ] || exit 4; [ -r "$p" ] || exit 6; set -o pipefail; '
        f'wc -c < "$p" && head -c {max_bytes + 1} -- "$p" | base64 )'
    )
    obs = runtime.session.run(script, FILE_TIMEOUT_S, max_output_bytes=2 * max_bytes + 4096, internal=True)
    if obs.timed_out:
        raise TimeoutError(f"reading {path} timed out after {FILE_TIMEOUT_S:g}s")
    if obs.exit_code != 0:
        raise _refusal(path, obs.exit_code, obs.output)
    size_line, _, encoded = obs.output.partition("\n")
    try:
        data = base64.b64decode(encoded)
        size = int(size_line.strip())
    except (binascii.Error, ValueError) as err:
        raise OSError(f"{path}: could not be read ({err})") from err
    return FileHead(data[:max_bytes], max(size, len(data)), len(data) > max_bytes)


def _content_to_stdout(content: str) -> str:
    """A command printing `content`: as a quoted word, or through base64 when that is shorter.

    The shell reads a command a byte at a time (about 0.5 us each), and the session quotes the
    command once more, so non-ASCII text (4 bytes per byte quoted, 8 requoted) is far cheaper as
    base64 (4 per 3); plain ASCII text is cheaper quoted.
    """
    quoted = bash_quote(content)
    requoted = len(quoted) + quoted.count("\\") + quoted.count("'")
    data = content.encode()
    if requoted <= 4 * len(data) // 3 + 16:
        return f"printf '%s' {quoted}"
    return f"printf '%s' '{base64.b64encode(data).decode()}' | base64 -d"


def write_text(runtime: ShellRuntime, path: str, content: str) -> bool:
    """Write `content` (UTF-8, no NUL bytes) to the file at `path`, making its directory; True if it existed.

    Refuses directories, devices, FIFOs and sockets (writing a FIFO blocks until a reader comes);
    a write the shell cannot make (read-only file or file system, a parent that is a file) raises
    OSError with the shell's reason.
    """
    path = _checked_path(runtime, path)
    script = (
        f"( p={bash_quote(path)}; {_CHECK_KIND}"
        'e=0; [ -e "$p" ] && e=1; mkdir -p -- "$(dirname -- "$p")" || exit 8; '
        f"set -o pipefail; {_content_to_stdout(content)} > \"$p\" || exit 9; echo \"$e\" )"
    )
    obs = runtime.session.run(script, FILE_TIMEOUT_S, internal=True)
    if obs.timed_out:
        raise TimeoutError(f"writing {path} timed out after {FILE_TIMEOUT_S:g}s")
    if obs.exit_code != 0:
        raise _refusal(path, obs.exit_code, obs.output)
    return obs.output.strip().endswith("1")
