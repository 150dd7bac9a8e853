"""Nothing leaks: a process killed with SIGKILL while holding an env leaves nothing after `forager gc`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import docker

from tests.conftest import needs_docker

HOLDER = textwrap.dedent("""
    import sys, time
    import gymnasium, forager.envs
    env = gymnasium.make("forager/SWE-v0", runtime=sys.argv[1])
    env.reset(seed=0)
    rt = env.unwrapped.runtime
    print(getattr(rt, "container_id", None) or rt.scratch, flush=True)
    time.sleep(600)
""")


def _hold_and_kill(kind: str) -> tuple[str, int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind], stdout=subprocess.PIPE, text=True)
    handle = proc.stdout.readline().strip()
    assert handle, "the holder process did not open an env"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return handle, proc.pid


def _gc(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "forager.cli", "gc", *args], capture_output=True, text=True, check=True).stdout


@needs_docker
def test_sigkilled_owner_leaves_no_container_after_gc():
    client = docker.from_env()
    container_id, pid = _hold_and_kill("docker")
    assert client.containers.get(container_id).labels["forager.owner.pid"] == str(pid)  # it leaked...
    assert "removed" in _gc()
    remaining = client.containers.list(all=True, filters={"label": f"forager.owner.pid={pid}"}, ignore_removed=True)
    assert remaining == []  # ...and gc removed it


def test_sigkilled_owner_leaves_no_scratch_directory_after_gc():
    scratch, _ = _hold_and_kill("local")
    assert os.path.isdir(scratch)
    _gc()
    assert not os.path.exists(scratch)


def test_gc_removes_an_ownerless_scratch_directory_once_it_is_a_minute_old(tmp_path):
    """What a removal that raced with a clone leaves: no owner file, so no owner to ask."""
    import tempfile
    import time

    from forager.runtime.local import SCRATCH_PREFIX

    old = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    new = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    os.makedirs(os.path.join(old, "repo"))
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    _gc()
    assert not os.path.exists(old)
    assert os.path.isdir(new)  # a runtime may be about to write its owner file
    os.rmdir(new)


def test_gc_keeps_what_live_processes_own(git_repo):
    from forager.runtime import LocalRuntime

    with LocalRuntime(git_repo) as rt:
        _gc()
        assert rt.scratch.is_dir() and rt.run("echo ok").output == "ok\n"


def test_sigterm_closes_runtimes(git_repo):
    code = textwrap.dedent(f"""
        import time
        from forager.runtime import LocalRuntime
        rt = LocalRuntime({str(git_repo)!r})
        print(rt.scratch, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    scratch = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert not os.path.exists(scratch)
