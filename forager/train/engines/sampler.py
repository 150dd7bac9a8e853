"""The sampler process behind `RemoteEngine`: an `HFEngine` serving requests, and a thread taking weight syncs.

    python -m forager.train.engines.sampler FD

FD is this process's end of a socket pair (a `multiprocessing.connection.Connection`). The parent
sends the spec first (model, engine options, the weight group's address and this sampler's rank);
the process answers `{"ready": ...}` once the model is loaded, or `{"error": ...}` and exits 1.
Then each request `{"op": ...}` gets one reply `{"ok": value}` or `{"error", "type"}`. The sync
thread joins the learner's group and loads each version it receives; the engine's lock puts the
load between two generations. The process ends on `close`, or when the parent's end of the socket closes.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from forager.train.engines.hf import HFEngine
from forager.train.sync import SyncAddress, WeightReceiver, tensor_checksums


class SyncThread(threading.Thread):
    """Joins the weight group, then loads each version the learner broadcasts, until the group closes."""

    def __init__(self, engine: HFEngine, address: SyncAddress, rank: int) -> None:
        super().__init__(name=f"forager-sync-{rank}", daemon=True)
        self.engine, self.address, self.rank = engine, address, rank
        self.stop = threading.Event()
        self.error: str | None = None
        """Why the last sync failed (or why the thread ended), for the parent's messages."""
        self.syncs = 0
        self.load_s = 0.0

    def run(self) -> None:
        try:
            receiver = WeightReceiver(self.address, self.rank, device=str(self.engine.device))
            while not self.stop.is_set():
                update = receiver.receive(self.stop.is_set)
                if update is None:
                    return
                version, pairs = update
                started = time.monotonic()
                try:
                    self.engine.update_weights(pairs, version)
                except Exception as err:  # noqa: BLE001 - reported to the learner, which raises SyncError
                    self.error = f"{type(err).__name__}: {err}"
                    receiver.acknowledge(version, error=self.error)
                    continue
                self.load_s, self.syncs, self.error = time.monotonic() - started, self.syncs + 1, None
                receiver.acknowledge(version)
        except Exception as err:  # noqa: BLE001 - the group broke; the learner sees it in its collective
            if not self.stop.is_set():
                self.error = f"weight sync stopped: {type(err).__name__}: {err}"
                traceback.print_exc()


def serve(conn: Connection) -> int:
    """Load the engine the spec names, then answer requests until `close` or the parent goes away."""
    spec = conn.recv()
    started = time.monotonic()
    try:
        if spec.get("threads"):
            import torch

            torch.set_num_threads(int(spec["threads"]))
        engine = HFEngine(spec["model"], **spec["options"])
    except Exception as err:  # noqa: BLE001 - the parent raises EngineError with this text
        traceback.print_exc()
        conn.send({"error": f"{type(err).__name__}: {err}", "type": type(err).__name__})
        return 1
    sync = None
    if spec.get("sync"):
        sync = SyncThread(engine, SyncAddress(**spec["sync"]), int(spec["rank"]))
        sync.start()
    conn.send({"ready": True, "load_s": time.monotonic() - started, "version": engine.version,
               "device": str(engine.device)})
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if request.get("op") == "close":
            conn.send({"ok": None})
            break
        conn.send(_answer(engine, sync, request))
    if sync is not None:
        sync.stop.set()
        sync.join(timeout=2)
    engine.close()
    return 0


def _answer(engine: HFEngine, sync: SyncThread | None, request: dict[str, Any]) -> dict[str, Any]:
    """One request's reply; an exception becomes its type and message, for the parent to raise."""
    op = request.get("op")
    try:
        if op == "act":
            return {"ok": engine.act(**request["kwargs"]).model_dump()}
        if op == "checksums":
            return {"ok": tensor_checksums(engine.lm.state_dict())}
        if op == "status":
            return {"ok": {"version": engine.version, "syncs": sync.syncs if sync else 0,
                           "sync_error": sync.error if sync else None, "load_s": sync.load_s if sync else 0.0}}
        return {"error": f"unknown request {op!r}", "type": "ValueError"}
    except Exception as err:  # noqa: BLE001 - raised again in the parent
        return {"error": f"{err}\n{traceback.format_exc(limit=-3)}", "type": type(err).__name__}


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[1]))
    try:
        return serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
