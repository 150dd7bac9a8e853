"""A warm pool of Docker runtimes: containers started and shells attached before anyone asks.

A reset then takes a ready runtime instead of waiting for `docker run` and the shell (about a
second), and the pool starts the replacement in the background, while the agent thinks. Runtimes
are never reused: each one serves one episode (or one grading) and is removed when closed, so a
pooled runtime is exactly as fresh as a new one. Idle runtimes are ordinary Forager runtimes: they
are removed at exit, on SIGTERM, and by `forager gc` after a crash.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import docker
import docker.errors

from forager.core import DEFAULT_COMMAND_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES
from forager.runtime.base import live_runtimes
from forager.runtime.docker import DockerLimits, DockerRuntime, docker_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Key:
    image: str
    workdir: str
    limits: str
    command_timeout: float
    max_output_bytes: int


class WarmPool:
    """Keeps up to `size` ready runtimes per (image, workdir, limits, timeouts), made on background threads."""

    def __init__(self, size: int = 2, *, client: docker.DockerClient | None = None, threads: int = 2) -> None:
        self.size = size
        self._client = client
        self._lock = threading.Lock()
        self._ready: dict[_Key, deque[DockerRuntime]] = defaultdict(deque)
        self._warming: dict[_Key, int] = defaultdict(int)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="forager-warm")
        self._closed = False
        self.hits = 0
        self.misses = 0

    def take(self, image: str, workdir: str = "/repo", *, limits: DockerLimits | None = None,
             command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
             max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> DockerRuntime:
        """A ready runtime if one is warm, else a new one made now; either way the pool refills."""
        limits = limits or DockerLimits()
        key = _Key(image, workdir, repr(limits), command_timeout, max_output_bytes)
        with self._lock:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            ready = self._ready[key]
            runtime = ready.popleft() if ready else None
            self._refill(key, limits)
        while runtime is not None:
            if self._usable(runtime):
                self.hits += 1
                return runtime
            runtime.close()
            with self._lock:
                runtime = self._ready[key].popleft() if self._ready[key] else None
        self.misses += 1
        return self._make(key, limits)

    def _refill(self, key: _Key, limits: DockerLimits) -> None:
        """Start enough warm-ups to bring `key` back to `size` (called with the lock held)."""
        for _ in range(self.size - len(self._ready[key]) - self._warming[key]):
            self._warming[key] += 1
            self._executor.submit(self._warm, key, limits)

    def _make(self, key: _Key, limits: DockerLimits) -> DockerRuntime:
        if self._client is None:
            self._client = docker_client()
        return DockerRuntime(key.image, key.workdir, limits=limits, command_timeout=key.command_timeout,
                             max_output_bytes=key.max_output_bytes, client=self._client)

    def _warm(self, key: _Key, limits: DockerLimits) -> None:
        try:
            runtime = self._make(key, limits)
        except Exception as err:  # noqa: BLE001 - a failed warm-up only means the next take makes its own
            if not live_runtimes.stopping:  # refused because the process is going down: nothing to say
                log.warning("warming a runtime of %s failed: %s", key.image, err)
            with self._lock:
                self._warming[key] -= 1
            return
        with self._lock:
            self._warming[key] -= 1
            if not self._closed:
                self._ready[key].append(runtime)
                return
        runtime.close()

    @staticmethod
    def _usable(runtime: DockerRuntime) -> bool:
        try:
            runtime.container.reload()
            return runtime.container.status == "running"
        except docker.errors.DockerException:
            return False

    def idle(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._ready.values())

    def close(self) -> None:
        """Remove every idle runtime; runtimes already taken belong to whoever took them."""
        with self._lock:
            self._closed = True
            idle = [runtime for queue in self._ready.values() for runtime in queue]
            self._ready.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for runtime in idle:
            runtime.close()

    def __enter__(self) -> WarmPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: WarmPool | None = None
_shared_lock = threading.Lock()


def shared_pool(size: int) -> WarmPool:
    """The process's pool, grown to at least `size` per key; closed at interpreter exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            import atexit

            _shared = WarmPool(size)
            atexit.register(_shared.close)
        _shared.size = max(_shared.size, size)
        return _shared
