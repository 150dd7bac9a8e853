"""The image manifest: one entry per verified image ($FORAGER_HOME/images/manifest.json), the builds that
failed before they had one (failures.json beside it), and build errors.

Writes are atomic (a temporary file renamed over the old one) and serialised across processes with
an advisory lock, so concurrent builds never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from forager.core import ForagerError
from forager.files import atomic_write_text
from forager.home import forager_home


def clip(text: str, limit: int = 300) -> str:
    """`text` on one line, at most `limit` characters, cut at a word boundary with an ellipsis (never mid-word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    # the last space (or path and punctuation break) in the second half, so a long path still ends cleanly
    breaks = [m.start() for m in re.finditer(r"\s|(?<=[/:,;)\]])", head) if m.start() > limit // 2]
    return (head[: breaks[-1]] if breaks else head).rstrip(" ,;:") + "…"


class ImageBuildError(ForagerError):
    """A build that stopped: the stage, why (one line), and the build log to read."""

    def __init__(self, stage: str, reason: str, log_path: Path | str | None = None, detail: str = "") -> None:
        self.stage, self.reason, self.log_path, self.detail = stage, reason, str(log_path or ""), detail
        where = f"; log: {self.log_path}" if self.log_path else ""
        tail = f"\n{detail.rstrip()}" if detail.strip() else ""
        super().__init__(f"{stage} failed: {reason}{where}{tail}")


class ManifestEntry(BaseModel):
    """What a built image is and what its tests did at baseline."""

    tag: str
    name: str
    version: str | None = None
    source: str
    source_kind: str
    commit: str
    python: str
    workdir: str = "/repo"
    test_command: str
    env_image: str
    base_image: str
    tests: list[str] = Field(default_factory=list)
    """Node ids collected with `test_command`."""
    baseline: dict[str, str] = Field(default_factory=dict)
    """Each collected test's status in one run of the whole suite (PASSED, FAILED, ERROR, SKIPPED, ...)."""
    collected: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    pass_share: float = 0.0
    """Passing tests over collected tests that did not skip."""
    min_pass_share: float = 0.8
    executable: bool = False
    failure: str | None = None
    """Why the image is not executable (stage: reason)."""
    collection_errors: dict[str, str] = Field(default_factory=dict)
    """Test files that failed to import; they are left out of `test_command` with --ignore."""
    suite_duration_s: float = 0.0
    image_size: int = 0
    build_s: float = 0.0
    stage_s: dict[str, float] = Field(default_factory=dict)
    requirements: list[str] = Field(default_factory=list)
    """The locked environment (name==version), installed from the wheelhouse."""
    notes: list[str] = Field(default_factory=list)
    log: str = ""
    created: str = ""


class BuildFailure(BaseModel):
    """A build that stopped before it had a manifest entry (fetch, detect, resolve, ... repo): the latest per source."""

    source: str
    stage: str
    reason: str
    tag: str | None = None
    """The image tag it was building, when it got that far (after resolve)."""
    log: str = ""
    created: str = ""


class Manifest:
    """The manifest file: `get`, `put`, `remove`, `entries`; and the failures file: `failures`, `record_build`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or forager_home() / "images" / "manifest.json"
        self.failures_path = self.path.with_name("failures.json")

    def failures(self) -> list[BuildFailure]:
        """Builds that failed before their image had an entry, newest first."""
        try:
            raw = json.loads(self.failures_path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        found = [BuildFailure.model_validate(f) for f in raw.get("failures", {}).values()]
        return sorted(found, key=lambda f: f.created, reverse=True)

    def record_build(self, source: str, error: ImageBuildError | None, has_entry: bool, tag: str | None = None,
                     log: str = "") -> None:
        """A build's outcome: a failure without an entry is kept (one per source); an entry, which records a
        failure of its own, clears it."""
        with self._locked():
            failures = {f.source: f for f in self.failures()}
            if error is not None and not has_entry:
                failures[source] = BuildFailure(
                    source=source, stage=error.stage, reason=clip(error.reason, 500), tag=tag, log=log,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            elif failures.pop(source, None) is None:
                return
            data = {"version": 1, "failures": {s: f.model_dump(mode="json") for s, f in sorted(failures.items())}}
            atomic_write_text(self.failures_path, json.dumps(data, indent=1))

    def entries(self) -> list[ManifestEntry]:
        return list(self._read().values())

    def get(self, tag: str) -> ManifestEntry | None:
        return self._read().get(tag)

    def put(self, entry: ManifestEntry) -> None:
        with self._locked():
            entries = self._read()
            entries[entry.tag] = entry
            self._write(entries)

    def remove(self, tags: list[str]) -> None:
        with self._locked():
            entries = self._read()
            for tag in tags:
                entries.pop(tag, None)
            self._write(entries)

    def _read(self) -> dict[str, ManifestEntry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise ForagerError(
                f"the image manifest {self.path} is not valid JSON ({err}); move it away to start over") from err
        return {tag: ManifestEntry.model_validate(e) for tag, e in raw.get("images", {}).items()}

    def _write(self, entries: dict[str, ManifestEntry]) -> None:
        data = {"version": 1, "images": {t: e.model_dump(mode="json") for t, e in sorted(entries.items())}}
        atomic_write_text(self.path, json.dumps(data, indent=1))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
