"""What an episode cannot do to its host or its container, and what a signal leaves behind (nothing).

Real Docker, real signals, real processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import docker
import pytest

from forager.runtime import DockerLimits, DockerRuntime
from forager.runtime.limits import missing_image_hint
from tests.conftest import SAMPLE_IMAGE, needs_docker


@needs_docker
def test_disk_limit_is_an_observation_and_the_session_survives():
    with DockerRuntime(SAMPLE_IMAGE, limits=DockerLimits(tmp_size="32m"), command_timeout=60) as rt:
        obs = rt.run("dd if=/dev/zero of=/tmp/big bs=1M count=200")
        assert "No space left on device" in obs.output and obs.exit_code != 0
        assert any("disk limit" in note and "32m" in note for note in obs.notes)
        assert rt.run("rm /tmp/big && df -k /tmp | tail -1").ok
        assert rt.run("echo alive").output == "alive\n"


@needs_docker
def test_kill_everything_cannot_stop_the_container():
    with DockerRuntime(SAMPLE_IMAGE, command_timeout=30) as rt:
        rt.run("sleep 300 &")
        rt.run("kill -9 -1; kill -9 $$")  # every process of the agent's user, its own shell last
        rt.container.reload()
        assert rt.container.status == "running"
        after = rt.run("echo alive; id -un")
        assert after.output == "alive\nforager\n" and after.session_restarted


@needs_docker
def test_redirecting_the_shells_output_is_noticed_at_once():
    with DockerRuntime(SAMPLE_IMAGE, command_timeout=30) as rt:
        rt.run("cd /tmp && export KEPT=1")
        started = time.monotonic()
        obs = rt.run("exec >/dev/null 2>&1; echo lost")
        assert time.monotonic() - started < 5 and not obs.timed_out
        assert any("redirected the shell's own output" in n for n in obs.notes)
        after = rt.run("echo back $KEPT; pwd; ls /nope")
        assert after.output.startswith("back 1\n/tmp\n") and "No such file" in after.output


@needs_docker
def test_no_capabilities_no_new_privileges_and_init_out_of_reach():
    with DockerRuntime(SAMPLE_IMAGE) as rt:
        host = rt.container.attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert rt.run("grep CapEff /proc/self/status").output.split()[-1] == "0000000000000000"
        assert rt.run("stat -c %u /proc/1").output.strip() != rt.run("id -u").output.strip()
        assert "Operation not permitted" in rt.run("kill -9 1").output


@needs_docker
def test_read_only_root_keeps_repo_tmp_and_home_writable():
    with DockerRuntime(SAMPLE_IMAGE, limits=DockerLimits(read_only=True), command_timeout=120) as rt:
        assert "Read-only file system" in rt.run("touch /usr/x").output
        assert rt.run("touch /repo/x ~/x /tmp/x && git status --short | grep -c x").ok
        assert rt.run("python -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -1").ok
        # $HOME is the image's, copied: the user's git identity is there, so commits work
        assert rt.run("git config user.email").output.strip() == "forager@localhost"
        assert rt.run("git add x && git commit -qm x && git log -1 --format=%s").output.strip() == "x"
        rt.container.reload()
        volumes = [m["Name"] for m in rt.container.attrs["Mounts"] if m["Type"] == "volume"]
        assert len(volumes) == 2  # the workdir and $HOME
    time.sleep(3)  # the reaper removes the container and its volumes in the background
    for volume in volumes:
        with pytest.raises(docker.errors.NotFound):
            docker.from_env().volumes.get(volume)


def test_missing_image_hints_fit_the_image():
    assert "forager images sample" in missing_image_hint("forager/sample:latest")
    assert "forager images build" in missing_image_hint("forager/repo-six:abc123")
    swebench = missing_image_hint("swebench/sweb.eval.x86_64.django__django-11099:latest")
    assert "docker pull" in swebench and "swebench" in swebench and "images sample" not in swebench


# -- signals -------------------------------------------------------------------------------------
OPEN_IN_MAIN = """
from forager.runtime import DockerRuntime
rt = DockerRuntime(IMAGE)
print(rt.container_id, flush=True)
time.sleep(600)
"""

OPEN_IN_WORKER = """
import threading
from forager.runtime import DockerRuntime
held = []
t = threading.Thread(target=lambda: held.append(DockerRuntime(IMAGE)))
t.start(); t.join()
print(held[0].container_id, flush=True)
time.sleep(600)
"""

WARM_POOL = """
from forager.runtime.pool import WarmPool
pool = WarmPool(3)
rt = pool.take(IMAGE)  # and three warm-ups start in the background: the signal comes while they start
print(rt.container_id, flush=True)
time.sleep(600)
"""


def _owned_by(pid: int) -> list:
    return docker.from_env().containers.list(all=True, filters={"label": f"forager.owner.pid={pid}"}, ignore_removed=True)


@needs_docker
@pytest.mark.parametrize("body", [OPEN_IN_MAIN, OPEN_IN_WORKER, WARM_POOL], ids=["main", "worker", "pool"])
def test_sigterm_removes_every_container(body):
    code = f"import time\nIMAGE = {SAMPLE_IMAGE!r}\n" + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip(), "the child did not open a runtime"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
    finally:
        proc.kill()
    time.sleep(2)  # anything the engine was still creating would show up by now
    assert _owned_by(proc.pid) == []
