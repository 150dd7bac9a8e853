"""A live table of concurrent image builds: one row per source, its stage, elapsed time and detail."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

_STYLES = {"done": "green", "cached": "cyan", "failed": "red", "queued": "dim"}


class BuildProgress:
    """Pass `update` as a build's `on_stage`; use as a context manager to show the table live."""

    def __init__(self, sources: list[str], console: Console | None = None) -> None:
        self._rows = {s: ["queued", "", None, None] for s in sources}  # stage, detail, started, finished
        self._lock = threading.Lock()
        self._live = Live(self, console=console, refresh_per_second=4, transient=False)

    def update(self, source: str, stage: str, detail: str = "") -> None:
        with self._lock:
            row = self._rows.setdefault(source, ["queued", "", None, None])
            now = time.monotonic()
            row[0], row[1] = stage, detail
            row[2] = row[2] or now
            if stage in ("done", "cached", "failed"):
                row[3] = now

    def __rich__(self) -> Table:
        table = Table("source", "stage", "time", "detail", expand=False)
        now = time.monotonic()
        with self._lock:
            for source, (stage, detail, started, finished) in self._rows.items():
                elapsed = f"{(finished or now) - started:6.1f}s" if started else ""
                style = _STYLES.get(stage, "yellow")
                table.add_row(source, f"[{style}]{stage}[/]", elapsed, detail[:90])
        return table

    def __enter__(self) -> BuildProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)
