"""Trajectory files: JSONL, one Trajectory per line, appended atomically, readable after any crash."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from forager.core import ForagerError, Trajectory

log = logging.getLogger(__name__)

TRAJECTORIES = "trajectories.jsonl"
INFRA_FAILURES = "infra_failures"
"""The subdirectory of a collection for episodes that the infrastructure (Docker, the policy's
server) failed: kept for diagnosis, never counted as done, so the next run retries them. Readers
of a collection directory (export, dedup, view) take only `*.jsonl` directly inside it, so these
never reach a dataset; point a reader at the subdirectory to see them."""


def is_infrastructure_failure(trajectory: Trajectory) -> bool:
    """An episode that ended because the infrastructure failed, not because of what the policy did."""
    return bool(trajectory.metadata.get("infrastructure_error"))


class TrajectoryFileError(ForagerError):
    """A trajectory input cannot be read; the message names the file (and line) and what is wrong."""


CONTAINER_NAME_ENV = "FORAGER_CONTAINER_NAME"
"""The name of the container a process runs in, where its entrypoint set it (images/forager/entrypoint.sh)."""


def lock_holder() -> dict[str, str]:
    """Who this process is, for the lock of a directory it writes: pid, host and, in a container, its name."""
    import socket

    holder = {"pid": str(os.getpid()), "host": socket.gethostname()}
    container = os.environ.get(CONTAINER_NAME_ENV) or (holder["host"] if os.path.exists("/.dockerenv") else "")
    return {**holder, "container": container} if container else holder


class OutputLocked(ForagerError):
    """A live process holds the lock of a trajectory directory; `holder` is its `lock_holder()`."""

    def __init__(self, directory: Path, holder: dict[str, str]) -> None:
        self.directory, self.holder = directory, holder
        super().__init__(f"another process ({self.who}) is writing to {directory}; wait for it, stop it, or use "
                         "another output directory")

    @property
    def who(self) -> str:
        """`container NAME, pid N` or `pid N on host H`."""
        pid = self.holder.get("pid") or "?"
        if self.holder.get("container"):
            return f"container {self.holder['container']}, pid {pid}"
        return f"pid {pid} on host {self.holder['host']}" if self.holder.get("host") else f"pid {pid}"


@dataclass(frozen=True)
class TrajectoryLine:
    """One trajectory as read from a file, with where it came from and its exact text."""

    path: Path
    lineno: int
    text: str
    trajectory: Trajectory


def _holds_trajectories(path: Path) -> bool:
    """Whether a JSONL file found in a directory is a trajectory file (judged by its first line).

    A first line that is not JSON counts as a trajectory file, so that reading it reports the error
    instead of skipping a damaged collection silently.
    """
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    return True
                return isinstance(first, dict) and "trajectory_id" in first and "messages" in first
    return False


def trajectory_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The files to read: each input file, and each trajectory `*.jsonl` directly inside an input directory."""
    files: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in sorted(path.glob("*.jsonl")) if p.is_file() and _holds_trajectories(p)]
            if not found:
                raise TrajectoryFileError(f"{path}: no trajectory files in it (*.jsonl whose lines are trajectories)")
        elif path.is_file():
            found = [path]
        else:
            raise TrajectoryFileError(f"{path}: no such file or directory")
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(p)
    return files


def _describe(err: ValidationError) -> str:
    problems = []
    for e in err.errors()[:3]:
        where = ".".join(str(part) for part in e["loc"])
        problems.append(f"{where}: {e['msg']}" if where else e["msg"])
    more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return "; ".join(problems) + more


def iter_trajectory_lines(inputs: Iterable[str | Path], *, strict: bool = True) -> Iterator[TrajectoryLine]:
    """Every trajectory in the inputs (files, or directories of `*.jsonl`), in file and line order.

    Raises TrajectoryFileError naming `file:line` for a line that is not a Trajectory, except an
    unfinished last line (no newline after it), which is skipped with a warning as the collector's
    own reader does.
    """
    for path in trajectory_files(inputs):
        with path.open(encoding="utf-8") as f:
            lineno = 0
            try:
                for lineno, line in enumerate(f, 1):  # noqa: B007 - lineno is reported after the loop too
                    text = line.rstrip("\r\n")
                    if not text.strip():
                        continue
                    try:
                        trajectory = Trajectory.model_validate_json(text)
                    except ValidationError as err:
                        if not line.endswith("\n"):  # a writer is still appending it, or was killed mid-line
                            log.warning("%s:%d: skipping an unfinished last line (%d chars)", path, lineno, len(text))
                            continue
                        if not strict:
                            log.warning("%s:%d: skipping a line that is not a trajectory", path, lineno)
                            continue
                        raise TrajectoryFileError(f"{path}:{lineno}: not a trajectory: {_describe(err)}") from None
                    yield TrajectoryLine(path, lineno, text, trajectory)
            except UnicodeDecodeError as err:
                raise TrajectoryFileError(f"{path}:{lineno + 1}: not UTF-8 text ({err.reason})") from None


def read_trajectories(inputs: Iterable[str | Path], *, strict: bool = True) -> list[Trajectory]:
    """All trajectories in the inputs (files, or directories of `*.jsonl`), in file and line order.

    Not strict, a line that is not a trajectory is skipped with a warning instead of raising.
    """
    return [line.trajectory for line in iter_trajectory_lines(inputs, strict=strict)]


class TrajectoryWriter:
    """Appends trajectories to `DIR/trajectories.jsonl`; safe across threads, exclusive across processes.

    Each trajectory is one `write(2)` of a whole line to a file opened with O_APPEND, then fsync'd,
    so a kill leaves either the whole line or none of it. A line left unfinished by a crash of the
    filesystem or the machine is cut off when the file is opened again.
    """

    def __init__(self, directory: str | Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / TRAJECTORIES
        self._fsync = fsync
        self._lock = threading.Lock()
        self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock: the kernel drops it when the holder dies (a lock left by a killed run is simply taken), and it
            # holds across containers that bind-mount the same directory (two compose stacks, one output).
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(self._lock_fd, 4096, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            try:
                holder = {k: str(v) for k, v in json.loads(text).items()}
            except (ValueError, AttributeError):  # a bare pid, as older versions wrote
                holder = {"pid": text}
            raise OutputLocked(self.directory, holder) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, (json.dumps(lock_holder()) + "\n").encode(), 0)
        self.repaired_bytes = self._cut_unfinished_line()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _cut_unfinished_line(self) -> int:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        with self.path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            tail = 0
            while tail < size:
                step = min(1 << 16, size - tail)
                handle.seek(size - tail - step)
                chunk = handle.read(step)
                at = chunk.rfind(b"\n")
                if at >= 0:
                    keep = size - tail - step + at + 1
                    break
                tail += step
            else:
                keep = 0
            if keep < size:
                log.warning("%s: cutting an unfinished last line (%d bytes) left by a killed run", self.path, size - keep)
                handle.truncate(keep)
            return size - keep

    def done(self) -> set[tuple[str, int]]:
        """The (task id, sample) pairs already written."""
        if not self.path.exists():
            return set()
        return {(t.task_id, t.sample) for t in read_trajectories([self.path], strict=False)}

    def append(self, trajectory: Trajectory) -> None:
        data = (trajectory.to_json() + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:  # a regular file takes the whole write; loop only for the pathological case
                written = os.write(self._fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        for fd in (getattr(self, "_fd", None), getattr(self, "_lock_fd", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._lock_fd = None

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
