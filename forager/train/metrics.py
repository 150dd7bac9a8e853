"""Training metrics: one JSON line per learner step in `<run_dir>/metrics.jsonl`, and TensorBoard event files.

A line holds `step`, `policy_version`, `reward_mean`, `samples`, `dropped_stale` and `staleness_max` at its
top level, then everything else namespaced: `rollout/...` (the batch's `BatchStats`: rewards, resolved share,
turns, tokens, terminations, the staleness histogram as `rollout/staleness/<lag>`, drops by reason),
`loss/...`, `policy/...` (clip fraction, approx KL, entropy), `optim/...` (grad norm, learning rate),
`perf/...` (the learner's), and `time/rollout_s`, `time/learner_s`, `time/sync_s` (where the step's wall
time went). `step_metrics` builds such a line.

Each line is one `write(2)` to a file opened for appending, flushed to disk, so a kill leaves whole lines
and at most one unfinished last line, which the next writer cuts off (as the trajectory store does). A run
resumed from step N drops the lines (and hides the TensorBoard events) of steps after N, which the
checkpoint does not hold. TensorBoard needs the `tensorboard` package (in the `train` extra); without it
only the JSONL is written, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from forager.core import ForagerError
from forager.files import atomic_write_text
from forager.train.buffer import BatchStats

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
REQUIRED = ("step", "policy_version", "reward_mean", "samples", "dropped_stale", "staleness_max")
"""The top-level keys every line has."""
PHASES = ("rollout", "learner", "sync")
"""The phases a step's time is split into (`time/<phase>_s`)."""
STALENESS_PREFIX = "rollout/staleness/"


class PhaseTimer:
    """Seconds spent in each phase of a step: `with timer("learner"): ...`; `metrics()` as `time/<phase>_s`."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        """`time/rollout_s`, `time/learner_s`, `time/sync_s` (0 when a phase did not run) and any other phase."""
        return {f"time/{phase}_s": float(self.seconds.get(phase, 0.0)) for phase in (*PHASES, *self.seconds)}

    def reset(self) -> None:
        self.seconds.clear()


def step_metrics(step: int, policy_version: int, stats: BatchStats, learner: Mapping[str, float] | None = None,
                 times: Mapping[str, float] | None = None) -> dict[str, Any]:
    """One step's line: the required top-level keys, then the batch's, the learner's and the time split's metrics.

    `times`: `PhaseTimer.metrics()`; without it the rollout time is the learner's wait for the batch."""
    rollout = stats.metrics()
    line: dict[str, Any] = {
        "step": step, "policy_version": policy_version, "reward_mean": stats.reward_mean, "samples": stats.samples,
        "dropped_stale": stats.dropped["stale"], "staleness_max": max(stats.staleness, default=0), "time": time.time(),
    }
    line |= rollout
    line |= dict(learner or {})
    line |= {f"time/{phase}_s": 0.0 for phase in PHASES} | {"time/rollout_s": rollout["time/rollout_s"]}
    line |= dict(times or {})
    return line


class MetricsWriter:
    """Appends one line per step to `<run_dir>/metrics.jsonl` and, when TensorBoard is installed, event files."""

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None, tensorboard: bool = True,
                 fsync: bool = True) -> None:
        """`resume_step`: the step of the checkpoint the run resumes from; lines after it are dropped."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._fsync = fsync
        self.repaired_bytes = _cut_unfinished_line(self.path)
        if resume_step is not None:
            _keep_through(self.path, resume_step)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.tensorboard = _summary_writer(self.run_dir / TENSORBOARD_DIR, resume_step) if tensorboard else None

    def write(self, line: Mapping[str, Any]) -> None:
        """Append one step's line (it must hold the REQUIRED keys) and log its numbers to TensorBoard."""
        missing = [key for key in REQUIRED if key not in line]
        if missing:
            raise ForagerError(f"a metrics line needs {', '.join(missing)} (build it with step_metrics)")
        if self._fd is None:
            raise ForagerError(f"the metrics writer of {self.run_dir} is closed")
        finite = {key: None if isinstance(value, float) and not math.isfinite(value) else value
                  for key, value in line.items()}  # JSON has no NaN: a skipped step's NaN norm becomes null
        data = (json.dumps(finite, default=_plain, allow_nan=False) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        if self._fsync:
            os.fsync(self._fd)
        if self.tensorboard is not None:
            self._to_tensorboard(line)

    def _to_tensorboard(self, line: Mapping[str, Any]) -> None:
        step = int(line["step"])
        staleness: list[int] = []
        for key, value in line.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.tensorboard.add_scalar(key, value, step)
            if key.startswith(STALENESS_PREFIX):
                staleness += [int(key[len(STALENESS_PREFIX):])] * int(value)
        if staleness:
            import numpy as np

            self.tensorboard.add_histogram("rollout/staleness", np.asarray(staleness), step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of `<run_dir>/metrics.jsonl` (an unfinished last line is left out)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def _summary_writer(log_dir: Path, resume_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: metrics go to metrics.jsonl only (pip install tensorboard)")
        return None
    purge = resume_step + 1 if resume_step is not None else None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge)


def _cut_unfinished_line(path: Path) -> int:
    """Cut a last line without its newline (a kill mid-write); the bytes cut. Lines are short: reads the tail."""
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        keep, window = 0, 1 << 16
        while True:
            start = max(0, size - window)
            handle.seek(start)
            at = handle.read(size - start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            if start == 0:
                break
            window *= 4
        if keep < size:
            log.warning("%s: cutting an unfinished last line (%d bytes) left by a killed run", path, size - keep)
            handle.truncate(keep)
        return size - keep


def _keep_through(path: Path, step: int) -> None:
    """Drop the lines of steps after `step` (written after the checkpoint the run resumes from)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line).get("step", -1) <= step]
    if len(kept) < len(lines):
        atomic_write_text(path, "".join(kept))


def _plain(value: Any) -> Any:
    """JSON for what json.dumps does not know: Counters are dicts already; numpy and torch scalars become numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-able in a metrics line")
