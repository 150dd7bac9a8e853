"""The warm pool: ready containers for resets and grading, never reused, never leaked."""

from __future__ import annotations

import time

from forager.runtime.docker import docker_client
from forager.runtime.pool import WarmPool
from tests.conftest import SAMPLE_IMAGE, needs_docker

pytestmark = needs_docker


def _wait_idle(pool: WarmPool, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pool.idle() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.idle() >= n


def _ours(client, pool_ids: set[str]) -> set[str]:
    return {c.id for c in client.containers.list(all=True, filters={"label": "forager"}, ignore_removed=True)} & pool_ids


def test_warm_runtimes_are_fresh_distinct_and_removed():
    client = docker_client()
    seen: set[str] = set()
    with WarmPool(2) as pool:
        first = pool.take(SAMPLE_IMAGE, "/repo", command_timeout=30)  # nothing warm yet: made now
        assert (pool.hits, pool.misses) == (0, 1)
        _wait_idle(pool, 2)
        started = time.monotonic()
        second = pool.take(SAMPLE_IMAGE, "/repo", command_timeout=30)
        take_s = time.monotonic() - started
        assert pool.hits == 1 and take_s < 0.5  # a warm one is handed over at once
        for runtime in (first, second):
            seen.add(runtime.container_id)
            assert runtime.run("pwd && ls left-behind.txt").output.split()[0] == "/repo"
        first.write_file("left-behind.txt", "x")
        first.close()
        second.close()
        # Another key (other timeouts) does not get the first key's runtimes.
        other = pool.take(SAMPLE_IMAGE, "/repo", command_timeout=31)
        assert pool.misses == 2
        seen.add(other.container_id)
        other.close()
        _wait_idle(pool, 2)
        third = pool.take(SAMPLE_IMAGE, "/repo", command_timeout=30)
        assert third.container_id not in seen  # never reused
        assert "left-behind.txt" not in third.run("ls").output
        seen.add(third.container_id)
        third.close()
        _wait_idle(pool, 2)
        idle = {r.container_id for q in pool._ready.values() for r in q}
    from forager.runtime.docker import reaper

    reaper.drain()
    assert not _ours(client, seen | idle)  # closing the pool removed the idle ones too


def test_a_dead_idle_runtime_is_skipped():
    with WarmPool(1) as pool:
        pool.take(SAMPLE_IMAGE, "/repo").close()
        _wait_idle(pool, 1)
        (idle,) = [r for q in pool._ready.values() for r in q]
        idle_id = idle.container_id
        idle.container.remove(force=True)
        runtime = pool.take(SAMPLE_IMAGE, "/repo")
        assert pool.hits == 0 and pool.misses == 2
        assert runtime.container_id != idle_id and runtime.run("echo ok").output.strip() == "ok"
        runtime.close()
