"""A warm pool of Docker runtimes: containers started and shells attached before anyone asks.

A reset then takes a ready runtime instead of waiting for `docker run` and the shell (about a
second), and the pool starts the replacement in the background, while the agent thinks. Told what
is coming (`expect`: a GRPO group of one task, a collection's next tasks), the pool also runs the
task's checkout ahead (a `Preparation`), so that a reset only hands out a container. Runtimes
are never reused: each one serves one episode (or one grading) and is removed when closed, so a
pooled runtime is exactly as fresh as a new one. Idle runtimes are ordinary Forager runtimes: they
are removed at exit, on SIGTERM, and by `forager gc` after a crash.

A pool serves one engine (`docker_host`; None: the default one): every runtime it hands out, for an
episode or a grading, runs there. `for_host` gives the pool of another engine, with the same settings,
owned by this one (a rollout whose workers are spread over several engines shares one pool object).
A pool of size 0 with `prepared_limit=0` starts nothing ahead: it only makes runtimes on its engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import docker

from forager.core import DEFAULT_COMMAND_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES
from forager.runtime.base import Preparation, live_runtimes, prepared
from forager.runtime.docker import ENGINE_ERRORS, DockerLimits, DockerRuntime, docker_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Key:
    image: str
    workdir: str
    limits: str
    command_timeout: float
    max_output_bytes: int
    prepared: str = ""
    """`Preparation.key` of runtimes made ready for one task; "" for plain ones."""


class WarmPool:
    """Ready runtimes made on background threads: up to `size` plain ones per (image, workdir, limits,
    timeouts), and prepared ones (a task's checkout already done) for the takes announced by `expect`,
    at most `prepared_limit` of those in all (default: 4 x size, at least 8)."""

    def __init__(self, size: int = 2, *, client: docker.DockerClient | None = None, threads: int = 2,
                 prepared_limit: int | None = None, docker_host: str | None = None) -> None:
        """`client`, if given, must be one of `docker_host`'s engine (made on first need otherwise)."""
        self.size = size
        self.prepared_limit = prepared_limit if prepared_limit is not None else max(8, 4 * size)
        self.docker_host = docker_host
        self.threads = threads
        self._client = client
        self._siblings: dict[str | None, WarmPool] = {}
        """The pools of other engines `for_host` made (closed with this one)."""
        self._lock = threading.Lock()
        self._ready: dict[_Key, deque[DockerRuntime]] = defaultdict(deque)
        self._warming: dict[_Key, int] = defaultdict(int)
        self._demand: dict[_Key, int] = defaultdict(int)
        """Takes announced by `expect` and not made yet, per prepared key."""
        self._recipes: dict[_Key, tuple[Preparation, DockerLimits]] = {}
        self._announced: dict[_Key, float] = {}
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="forager-warm")
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.prepared_hits = 0
        self.prepared_misses = 0

    def take(self, image: str, workdir: str = "/repo", *, limits: DockerLimits | None = None,
             command_timeout: float = DEFAULT_COMMAND_TIMEOUT, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
             preparation: Preparation | None = None) -> DockerRuntime:
        """A ready runtime if one is warm, else a new one made now; either way the pool refills.

        With a `preparation`, a runtime the pool prepared so is taken first (its `prepared` is set);
        when there is none, the runtime is a plain one and the caller prepares it (`base.prepared`).
        """
        limits = limits or DockerLimits()
        key = _Key(image, workdir, repr(limits), command_timeout, max_output_bytes)
        if preparation is not None:
            runtime = self._take_prepared(replace(key, prepared=preparation.key))
            if runtime is not None:
                return runtime
        with self._lock:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            ready = self._ready[key]
            runtime = ready.popleft() if ready else None
            self._refill(key, limits)
        runtime = self._first_usable(key, runtime)
        if runtime is not None:
            self.hits += 1
            return runtime
        self.misses += 1
        return self._make(key, limits)

    def expect(self, image: str, preparation: Preparation, count: int = 1, *, workdir: str = "/repo",
               limits: DockerLimits | None = None, command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
               max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        """Announce `count` takes with `preparation` to come: runtimes are started and prepared for
        them in the background, so that those takes find the task's state ready.

        GRPO asks for a group of episodes of one task, and a collection knows its next tasks: that is
        what a pool can know ahead. Prepared runtimes no take claims stay idle until `prepared_limit`
        needs their room (the least recently announced go first) or the pool closes.
        """
        limits = limits or DockerLimits()
        key = _Key(image, workdir, repr(limits), command_timeout, max_output_bytes, preparation.key)
        with self._lock:
            if self._closed or count <= 0:
                return
            self._recipes[key] = (preparation, limits)
            self._demand[key] += count
            self._announced[key] = time.monotonic()
            evicted = self._refill_prepared()
        for runtime in evicted:
            runtime.close()

    def cancel(self, image: str, preparation: Preparation, count: int = 1, *, workdir: str = "/repo",
               limits: DockerLimits | None = None, command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
               max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        """Withdraw `count` takes announced by `expect` that will not come (an episode that ended without
        grading): what was prepared for them becomes room for other announcements."""
        key = _Key(image, workdir, repr(limits or DockerLimits()), command_timeout, max_output_bytes, preparation.key)
        with self._lock:
            if key in self._recipes:
                self._demand[key] = max(0, self._demand[key] - count)
                evicted = self._refill_prepared()  # to forget the task if nothing is left of it
            else:
                evicted = []
        for runtime in evicted:
            runtime.close()

    def _take_prepared(self, key: _Key) -> DockerRuntime | None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            runtime = None
            if key in self._recipes:  # else never announced (or forgotten): nothing was made for it
                self._demand[key] = max(0, self._demand[key] - 1)
                ready = self._ready[key]
                runtime = ready.popleft() if ready else None
        runtime = self._first_usable(key, runtime)
        with self._lock:
            if runtime is not None:
                self.prepared_hits += 1
            else:
                self.prepared_misses += 1
            evicted = self._refill_prepared()  # a take leaves room for announced takes still waiting
        for stale in evicted:
            stale.close()
        return runtime

    def _first_usable(self, key: _Key, runtime: DockerRuntime | None) -> DockerRuntime | None:
        """`runtime` if its container still runs, else the next ready one of `key` that does, or None."""
        while runtime is not None:
            if self._usable(runtime):
                return runtime
            runtime.close()
            with self._lock:
                runtime = self._ready[key].popleft() if self._ready[key] else None
        return None

    def _refill(self, key: _Key, limits: DockerLimits) -> None:
        """Start enough warm-ups to bring `key` back to `size` (called with the lock held)."""
        for _ in range(self.size - len(self._ready[key]) - self._warming[key]):
            self._warming[key] += 1
            self._executor.submit(self._warm, key, limits)

    def _refill_prepared(self) -> list[DockerRuntime]:
        """Start preparations for announced takes, oldest announcement first, within `prepared_limit`
        (called with the lock held); returns the idle runtimes evicted to make room, to be closed."""
        evicted: list[DockerRuntime] = []
        for key in [k for k in self._recipes if not (self._demand[k] or self._ready[k] or self._warming[k])]:
            for table in (self._recipes, self._announced, self._demand, self._ready, self._warming):
                table.pop(key, None)  # nothing announced, ready or in the making: forget the task
        for key in sorted(self._recipes, key=self._announced.__getitem__):
            preparation, limits = self._recipes[key]
            for _ in range(self._demand[key] - len(self._ready[key]) - self._warming[key]):
                if self._prepared_count() >= self.prepared_limit:
                    surplus = self._evictable(key)
                    if surplus is None:
                        return evicted
                    evicted.append(self._ready[surplus].popleft())
                self._warming[key] += 1
                self._executor.submit(self._warm, key, limits, preparation)
        return evicted

    def _prepared_count(self) -> int:
        return sum(len(self._ready[key]) + self._warming[key] for key in self._recipes)

    def _evictable(self, keep: _Key) -> _Key | None:
        """The least recently announced key, other than `keep`, holding more idle runtimes than takes to come."""
        for key in sorted(self._recipes, key=self._announced.__getitem__):
            if key != keep and len(self._ready[key]) > self._demand[key]:
                return key
        return None

    def for_host(self, docker_host: str | None) -> WarmPool:
        """The pool of `docker_host`'s engine: this one, or one with its settings, made now and closed with it."""
        if docker_host == self.docker_host:
            return self
        with self._lock:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            sibling = self._siblings.get(docker_host)
            if sibling is None:
                sibling = WarmPool(self.size, threads=self.threads, prepared_limit=self.prepared_limit,
                                   docker_host=docker_host)
                self._siblings[docker_host] = sibling
            return sibling

    def _make(self, key: _Key, limits: DockerLimits) -> DockerRuntime:
        if self._client is None:
            self._client = docker_client(self.docker_host)
        return DockerRuntime(key.image, key.workdir, limits=limits, command_timeout=key.command_timeout,
                             max_output_bytes=key.max_output_bytes, client=self._client, docker_host=self.docker_host)

    def _warm(self, key: _Key, limits: DockerLimits, preparation: Preparation | None = None) -> None:
        runtime = None
        try:
            runtime = self._make(key, limits)
            if preparation is not None:
                prepared(runtime, preparation)
        except Exception as err:  # noqa: BLE001 - a failed warm-up only means the next take makes its own
            if runtime is not None:
                runtime.close()
            if not live_runtimes.stopping:  # refused because the process is going down: nothing to say
                what = f"preparing {preparation.key} in" if preparation is not None else "warming"
                log.warning("%s a runtime of %s failed: %s", what, key.image, err)
            with self._lock:
                self._warming[key] -= 1
                if preparation is not None:
                    self._demand[key] = 0  # the taker prepares it and sees the error; no retry loop here
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
        except ENGINE_ERRORS:  # an engine gone too: nothing of it is usable
            return False

    def idle(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._ready.values())

    def stats(self) -> dict[str, int]:
        """Takes served warm and cold, plain and prepared, and the runtimes idle and in the making now."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "prepared_hits": self.prepared_hits,
                    "prepared_misses": self.prepared_misses, "idle": sum(len(q) for q in self._ready.values()),
                    "warming": sum(self._warming.values())}

    def close(self) -> None:
        """Remove every idle runtime (the `for_host` pools' too); runtimes already taken belong to whoever took them."""
        with self._lock:
            self._closed = True
            idle = [runtime for queue in self._ready.values() for runtime in queue]
            self._ready.clear()
            siblings = list(self._siblings.values())
        self._executor.shutdown(wait=True, cancel_futures=True)
        for runtime in idle:
            runtime.close()
        for sibling in siblings:
            sibling.close()

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
