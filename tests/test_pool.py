"""The warm pool: ready containers for resets and grading, never reused, never leaked."""

from __future__ import annotations

import time

import pytest

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


def _wait(predicate, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate()


def test_announced_episodes_start_from_a_prepared_checkout_and_grade_in_a_prepared_container():
    """`expect` has the pool check the task out (and prepare its grading) ahead; the agent sees the same
    tree as an inline checkout, with no trace of the fix, and each container still serves one take."""
    import gymnasium

    import forager.envs  # noqa: F401 - registers forager/SWE-v0
    from forager.images.sample import sample_tasks
    from forager.runtime.docker import reaper
    from forager.tasks.checkout import leaked_objects

    task = sample_tasks(SAMPLE_IMAGE)[0]
    inline = gymnasium.make("forager/SWE-v0", task=task, runtime="docker").unwrapped
    inline.reset()
    tree = inline.runtime.run_checked("git rev-parse HEAD^{tree}").strip()
    inline.close()
    client = docker_client()
    with WarmPool(1) as pool:
        env = gymnasium.make("forager/SWE-v0", runtime="docker", warm_pool=pool, max_turns=5).unwrapped
        env.expect(task, 2)
        _wait(lambda: pool.stats()["idle"] >= 2)  # two checkouts
        seen = set()
        for _ in range(2):
            obs, info = env.reset(options={"task": task})
            assert env.runtime.prepared[0].startswith("checkout:")
            assert env.runtime.container_id not in seen
            seen.add(env.runtime.container_id)
            assert env.runtime.run_checked("git rev-parse HEAD^{tree}").strip() == tree
            assert env.start_commit == env.runtime.run_checked("git rev-parse HEAD").strip()
            assert leaked_objects(env.runtime).clean
            assert env.runtime.run("git status --porcelain").output.strip() == ""
        assert (pool.prepared_hits, pool.prepared_misses) == (2, 0)
        _wait(lambda: pool.stats()["warming"] == 0)  # each reset announced its grading: the first one's is spare
        env.runtime.write_file("fix.patch", task.patch)
        env.runtime.run_checked("git apply fix.patch && rm fix.patch")
        *_, info = env.step("<tool: submit>\n</tool>")
        assert info["resolved"], info["reward_details"]
        assert pool.prepared_hits == 3  # the grading container was prepared too
        env.close()
        idle = {r.container_id for q in pool._ready.values() for r in q}
    reaper.drain()
    assert not _ours(client, seen | idle)


def test_the_prepared_limit_evicts_the_oldest_surplus_and_a_failed_preparation_falls_back():
    from forager.runtime.base import Preparation, prepared

    def mark(name):
        return Preparation(name, lambda runtime: runtime.run_checked(f"echo {name} > /tmp/mark && echo {name}").strip())

    with WarmPool(0, prepared_limit=1) as pool:
        pool.expect(SAMPLE_IMAGE, mark("a"))
        taken = pool.take(SAMPLE_IMAGE, preparation=mark("a"))  # before the preparation is done: a plain one
        assert pool.prepared_misses == 1 and taken.prepared is None
        assert prepared(taken, mark("a")) == "a" and taken.run("cat /tmp/mark").output.strip() == "a"
        taken.close()
        _wait(lambda: pool.idle() == 1)  # the late one: idle, and no take is announced for it
        (surplus,) = [r for q in pool._ready.values() for r in q]
        pool.expect(SAMPLE_IMAGE, mark("b"))  # no room: the surplus "a" goes
        assert surplus.closed
        _wait(lambda: pool.idle() == 1)
        b = pool.take(SAMPLE_IMAGE, preparation=mark("b"))
        assert b.prepared == ("b", "b") and b.run("cat /tmp/mark").output.strip() == "b"
        b.close()

        broken = Preparation("broken", lambda runtime: runtime.run_checked("exit 3"))
        pool.expect(SAMPLE_IMAGE, broken)
        _wait(lambda: pool.stats()["warming"] == 0)
        runtime = pool.take(SAMPLE_IMAGE, preparation=broken)
        assert runtime.prepared is None  # the taker runs it and sees the error itself
        with pytest.raises(RuntimeError, match=r"command failed \(3\)"):
            prepared(runtime, broken)
        runtime.close()
        assert not pool._recipes  # tasks with nothing announced, ready or in the making are forgotten


def test_one_client_serves_many_containers_from_one_connection_pool():
    """docker-py keeps a pool per URL path (at most 25) and closes the oldest while another thread may be
    in it: at 64 envs a reset failed so. Forager's client sends every path through one pool."""
    from concurrent.futures import ThreadPoolExecutor

    client = docker_client()
    containers = [client.containers.run(SAMPLE_IMAGE, ["sleep", "60"], detach=True, network_mode="none")
                  for _ in range(30)]
    try:
        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(lambda c: (c.reload(), c.exec_run(["true"]).exit_code)[1], containers))
        assert codes == [0] * 30
        assert len(client.api.get_adapter("http+docker://localhost/").pools) == 1
    finally:
        for container in containers:
            container.remove(force=True)
