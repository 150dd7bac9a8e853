"""A learner rank as a Ray actor (`LearnerRank`): the code a torchrun rank runs, in a torchrun rank's environment.

`forager.train.ray_learner` places one per placement-group bundle and drives them; this module is what runs on
the nodes. The actor reports where it runs (`place`), takes its torchrun environment (`join`), proves `out_dir` is
shared (`mark`, `sees`), then runs `forager.train.loop.train` (rank 0 records its progress for the driver to
fetch with `progress`) or any function (`call`); `interrupt` raises KeyboardInterrupt in the running call, as
Ctrl-C does in a torchrun rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forager.core import ForagerError

if TYPE_CHECKING:
    from forager.train.loop import TrainSummary

__all__ = ["LearnerRank", "RankPlace", "SHARED_MARK"]

SHARED_MARK = ".ray-learner-shared"
"""The file rank 0 writes in `out_dir` and every other rank must see: proof the directory is shared."""


@dataclass(frozen=True)
class RankPlace:
    """Where a rank's actor runs."""

    rank: int
    node_ip: str
    node_id: str
    pid: int
    gpu_ids: tuple[str, ...] = ()
    """The GPUs Ray gave it (ids as CUDA_VISIBLE_DEVICES names them)."""
    port: int = 0
    """Rank 0: a free port on its node for the process group's rendezvous (MASTER_PORT)."""

    @property
    def where(self) -> str:
        return f"{self.node_ip} ({self.node_id[:8]})"


class LearnerRank:
    """One learner rank: a Ray actor that runs a torchrun rank's code in a torchrun rank's environment.

    Threaded (a few calls at once): while `train` or `call` runs, the driver asks for `progress`, pings with `place`,
    and `interrupt` raises KeyboardInterrupt in the running call, as Ctrl-C does in a torchrun rank."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self._events: list[tuple[Any, ...]] = []
        self._acked = 0
        """Events before this index were delivered to the driver and dropped."""
        self._new = threading.Condition()
        self._lock = threading.Lock()
        self._running: int | None = None
        """The thread id of the running `train` or `call`."""

    def place(self) -> RankPlace:
        import ray

        context = ray.get_runtime_context()
        gpus = tuple(str(g) for g in context.get_accelerator_ids().get("GPU", []))
        return RankPlace(self.rank, ray.util.get_node_ip_address(), context.get_node_id(), os.getpid(), gpus,
                         _free_port() if self.rank == 0 else 0)

    def join(self, env: dict[str, str]) -> None:
        """Take the rank's torchrun environment (before torch touches CUDA or the process group)."""
        os.environ.update(env)

    def mark(self, out_dir: str, token: str) -> None:
        """Rank 0: create `out_dir` and leave a mark in it for the other ranks to find."""
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / SHARED_MARK).write_text(token)
        except OSError as err:
            raise ForagerError(f"learner rank 0 cannot write out_dir {out_dir}: {err}") from err

    def sees(self, out_dir: str, token: str) -> bool:
        try:
            return (Path(out_dir) / SHARED_MARK).read_text() == token
        except OSError:
            return False

    def unmark(self, out_dir: str) -> None:
        (Path(out_dir) / SHARED_MARK).unlink(missing_ok=True)

    def train(self, config: dict[str, Any], out_dir: str) -> tuple[TrainSummary, float] | None:
        """`forager.train.loop.train` as this rank; rank 0 records its progress for the driver. Rank 0's summary
        and its elapsed seconds; None when stopped before the loop began."""
        from forager.train.config import TrainConfig
        from forager.train.loop import train

        leader = self.rank == 0
        try:
            with self._interruptible():
                summary = train(TrainConfig.model_validate(config), out_dir,
                                on_start=self._started if leader else None, on_step=self._stepped if leader else None)
        except KeyboardInterrupt:
            return None
        return summary, summary.elapsed

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` as this rank (its torchrun environment set; `fn` joins the process group if it needs it)."""
        with self._interruptible():
            return fn(*args)

    def progress(self, acked: int, wait_s: float) -> list[tuple[Any, ...]]:
        """Rank 0's events from index `acked` on (the driver has the ones before), waiting up to `wait_s` for one."""
        with self._new:
            if acked > self._acked:  # a late call with an older index drops nothing
                del self._events[:acked - self._acked]
                self._acked = acked
            if not self._events:
                self._new.wait(wait_s)
            return list(self._events)

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running call; False when none runs."""
        with self._lock:
            if self._running is None:
                return False
            _raise_in(self._running, KeyboardInterrupt)
            return True

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        with self._lock:
            self._running = threading.get_ident()
        try:
            yield
        finally:
            with self._lock:
                self._running = None
                _raise_in(threading.get_ident(), None)  # a stop that came as the call ended must not fire later

    def _record(self, *event: Any) -> None:
        with self._new:
            self._events.append(event)
            self._new.notify_all()

    def _started(self, summary: TrainSummary) -> None:
        self._record("start", _snapshot(summary), summary.elapsed)

    def _stepped(self, line: dict[str, Any], summary: TrainSummary) -> None:
        self._record("step", line, _snapshot(summary), summary.elapsed)


def _snapshot(summary: TrainSummary) -> TrainSummary:
    return dataclasses.replace(summary, rewards=list(summary.rewards))


def _raise_in(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise `exception` in another thread of this process at its next bytecode (None: cancel a pending one)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exception) if exception is not None else None)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]
