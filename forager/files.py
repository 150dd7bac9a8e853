"""Files that appear whole or not at all: written to a temporary file, fsync'd, then renamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class atomic_output:  # noqa: N801 - used as a context manager, like open()
    """A text file that appears at `path` only when the `with` block succeeds (temp file, fsync, rename)."""

    def __init__(self, path: str | Path, mode: str = "w"):
        self.path = Path(path)
        self.mode = mode
        self.tmp: Path | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(name)
        self._file = os.fdopen(fd, self.mode, **({} if "b" in self.mode else {"encoding": "utf-8"}))
        return self._file

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.chmod(self.tmp, 0o644)  # mkstemp makes it 0600
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically: readers see the old file or the new one, never half of it."""
    with atomic_output(path) as out:
        out.write(text)
    return Path(path)
