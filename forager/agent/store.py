"""Trajectory files: JSONL, one Trajectory per line, appended atomically, readable after any crash."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from forager.core import ForagerError, Trajectory

log = logging.getLogger(__name__)

TRAJECTORIES = "trajectories.jsonl"


def trajectory_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The JSONL files named by `inputs`: files as given, directories by their `*.jsonl` (sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.glob("*.jsonl") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ForagerError(f"{path} does not exist: give trajectory files (.jsonl) or directories holding them")
    return files


def read_trajectories(inputs: Iterable[str | Path], *, strict: bool = True) -> Iterator[Trajectory]:
    """Every trajectory in `inputs`. A malformed line is an error naming file:line (or, not strict, skipped).

    An unterminated last line (a writer killed mid-line) is skipped with a warning either way.
    """
    for path in trajectory_files(inputs):
        with path.open("rb") as handle:
            data = handle.read()
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            complete = number < len(lines)  # the last piece had no newline after it
            try:
                yield Trajectory.from_json(raw)
            except (ValidationError, ValueError) as err:
                if not complete:
                    log.warning("%s:%d: skipping an unfinished last line (%d bytes)", path, number, len(raw))
                    continue
                if strict:
                    first = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise ForagerError(f"{path}:{number}: not a trajectory ({first})") from err
                log.warning("%s:%d: skipping a malformed line", path, number)


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
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 64, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            raise ForagerError(
                f"another process (pid {holder or '?'}) is writing to {self.directory}; wait for it, "
                "stop it, or use another output directory"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
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
