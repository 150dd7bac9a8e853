"""Files that appear whole or not at all (a temporary file, fsync'd, then renamed), and content digests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_output(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file that appears at `path` only when the `with` block succeeds (temp file, fsync, rename).

    Readers see the old file or the new one, never half of one; on an exception nothing changes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_output(path) as out:
        out.write(text)
    return Path(path)


def content_digest(*parts: object, length: int | None = 12) -> str:
    """The sha256 hex digest of `parts` one after the other, cut to `length` (None: all 64 digits).

    Bytes and strings go in as they are (strings UTF-8 encoded); anything else as JSON with sorted
    keys. Image tags and cache keys are made of these, so the encoding must never change.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif not isinstance(part, bytes):
            part = json.dumps(part, sort_keys=True).encode()
        digest.update(part)
    return digest.hexdigest()[:length]


def tree_digest(root: Path, skip: Iterable[str] = (), length: int | None = 12) -> str:
    """The sha256 hex digest of every file under `root` (relative path and bytes), cut to `length`.

    Files with a path part named in `skip` (say `__pycache__`) are left out.
    """
    skipped = set(skip)
    digest = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and not skipped.intersection(p.relative_to(root).parts))
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:length]


@contextmanager
def atomic_directory(target: Path, marker: str) -> Iterator[Path]:
    """A staging directory beside `target` that becomes `target` when the block ends without an error.

    The block writes the directory's files and, last, `marker`: a directory without its marker is a
    build that died half-way, and is replaced. A concurrent builder that finished first wins; a
    failed or interrupted block leaves nothing behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        for path in staging.iterdir():
            if path.is_file():
                path.chmod(0o644)  # some writers (safetensors) make their files private
        staging.chmod(0o755)  # mkdtemp makes it private
        if target.exists() and not (target / marker).exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).exists():  # else another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
