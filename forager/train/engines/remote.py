"""An engine in a separate process: requests over a socket pair, weights over `torch.distributed`.

`RemoteEngine(model)` starts `python -m forager.train.engines.sampler` (an `HFEngine` in its own
process), asks it for each `act` over a private socket pair, and sends new weights through a
`train.sync.WeightBroadcaster`: its own one (a group of this process and the sampler), or one shared
by several engines (`RemoteEngine(model, broadcaster=b, rank=i)`, then `b.connect()`), whose
`broadcast` updates every sampler of the group at once. The scale-out issue puts vLLM behind the same seam.

The process lives in its own session (a Ctrl-C reaches only the trainer, which closes it) and ends
when this side's socket closes, so a trainer that dies leaves no sampler behind. A sampler that
fails or exits makes every call raise `EngineError` with its exit status and the tail of its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from forager.core import ContextLengthExceeded, Message, PolicyError, PolicyOutput, Task
from forager.train.engines import EngineError, NamedTensors
from forager.train.sync import SyncError, SyncStats, WeightBroadcaster

LOG_TAIL_CHARS = 2000


class RemoteEngine:
    """The hf engine in a child process, fed new weights by broadcast."""

    name = "remote"

    def __init__(self, model: str, *, broadcaster: WeightBroadcaster | None = None, rank: int = 1,
                 backend: str = "gloo", threads: int | None = None, start_timeout_s: float = 600.0,
                 **options: Any) -> None:
        """`options` are HFPolicy's (temperature, seed, max_tokens, device, dtype, ...); `threads` caps torch's
        threads in the sampler; `backend` is the own broadcaster's (gloo, or nccl on GPUs)."""
        world = broadcaster.address.world_size if broadcaster is not None else 2
        if not 1 <= rank < world:
            raise EngineError(f"sampler rank {rank} is outside the weight group's ranks 1 to {world - 1}")
        self.model = str(model)
        self.closed = False
        self.own_broadcaster = broadcaster is None
        self.broadcaster = broadcaster or WeightBroadcaster(1, backend=backend)
        self.rank = rank
        self.last_sync: SyncStats | None = None
        self._lock = threading.Lock()
        self._log = tempfile.NamedTemporaryFile(prefix="forager-sampler-", suffix=".log", delete=False)
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "forager.train.engines.sampler", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                env=_sampler_env())
        except BaseException:
            ours.close()
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            if self.own_broadcaster:
                self.broadcaster.close(wait_s=0.0)
            raise
        finally:
            theirs.close()  # the child holds its copy: when it exits, our reads end instead of hanging
        self._conn = Connection(ours.detach())
        try:
            self._start(options, threads, start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, options: dict[str, Any], threads: int | None, timeout_s: float) -> None:
        self._conn.send({"model": self.model, "options": options, "threads": threads, "rank": self.rank,
                         "sync": self.broadcaster.address.to_dict()})
        ready = self._receive(timeout_s, f"the sampler for {self.model} did not start")
        if "error" in ready:
            raise EngineError(f"the sampler for {self.model} failed to start: {ready['error']}")
        self._version: int = ready["version"]
        self.device: str = ready["device"]
        self.load_s: float = ready["load_s"]
        if self.own_broadcaster:
            self.broadcaster.connect(check=self.check_alive)

    # -- the Engine seam -----------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The version the whole weight group holds after its last sync (the sampler's first one before)."""
        last = self.broadcaster.last
        return last.version if last is not None else self._version

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        """The sampler's next message (`task` stays here: a model never sees it)."""
        kwargs = {"messages": messages, "prefix_token_ids": prefix_token_ids, "max_tokens": max_tokens, "tools": tools}
        return PolicyOutput(**self._call("act", kwargs=kwargs))

    def update_weights(self, weights: NamedTensors, policy_version: int) -> None:
        """Broadcast the weights to every sampler of this engine's group; returns once they all hold them."""
        self._check_open()
        try:
            self.last_sync = self.broadcaster.broadcast(weights, policy_version)
        except SyncError as err:
            self.check_alive()
            raise EngineError(f"weight sync to the sampler for {self.model} failed: {err}") from err

    def close(self) -> None:
        """Stop the sampler (asked, then killed after 10 s) and free the weight group; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.own_broadcaster:  # the sampler's sync thread stops on the news (a dead one is not waited for)
            self.broadcaster.close(wait_s=5.0 if self.process.poll() is None else 0.0)
        try:
            if self.process.poll() is None:
                self._conn.send({"op": "close"})
                self.process.wait(timeout=10)
        except (OSError, EOFError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self._conn.close()
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)

    # -- inspection ----------------------------------------------------------------------------
    def checksums(self) -> dict[str, str]:
        """A digest per weight of the sampler's model (`train.sync.tensor_checksums`), to compare with the learner's."""
        return self._call("checksums")

    def status(self) -> dict[str, Any]:
        """The sampler's version, syncs taken, the last sync error and the seconds its last load took."""
        return self._call("status")

    def check_alive(self) -> None:
        """Raise EngineError if the sampler process has exited."""
        code = self.process.poll()
        if code is not None:
            raise EngineError(f"the sampler for {self.model} exited with status {code}{self._log_tail()}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "engine": "process", "pid": self.process.pid}

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the socket ----------------------------------------------------------------------------
    def _call(self, op: str, **fields: Any) -> Any:
        """One request and its reply; the sampler's exceptions are raised here as the nearest Forager error."""
        self._check_open()
        with self._lock:  # one request at a time on the socket; the sampler serves them in order
            try:
                self._conn.send({"op": op, **fields})
            except OSError as err:
                self.check_alive()
                raise EngineError(f"the sampler for {self.model} is unreachable: {err}") from err
            reply = self._receive(None, f"the sampler for {self.model} stopped answering")
        if "error" not in reply:
            return reply["ok"]
        kind, text = reply.get("type"), reply["error"]
        if kind == "ContextLengthExceeded":
            raise ContextLengthExceeded(text)
        raise PolicyError(f"the sampler for {self.model} failed in {op}: {kind}: {text}")

    def _receive(self, timeout_s: float | None, what: str) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(0.2):
            self.check_alive()
            if deadline is not None and time.monotonic() > deadline:
                raise EngineError(f"{what} within {timeout_s:.0f} s{self._log_tail()}")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as err:
            self.process.wait(timeout=10)
            self.check_alive()
            raise EngineError(f"{what}: {err}") from err

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError(f"the remote engine for {self.model} is closed")

    def _log_tail(self) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""
        return f"; its log ends:\n{text}" if text else ""


def _sampler_env() -> dict[str, str]:
    """This environment, with the directory Forager is imported from first on the path (a source checkout
    works from any directory) and c10d's routine warnings (the store's wait timeouts) silenced."""
    root = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"TORCH_CPP_LOG_LEVEL": "ERROR", **os.environ, "PYTHONPATH": path}
