"""The Runtime seam on real bash: in a real container and in a local scratch clone."""

from __future__ import annotations

import time

import pytest

from tests.conftest import SAMPLE_IMAGE, needs_docker


def test_state_persists_between_commands(runtime):
    runtime.run("cd /tmp && export FOO=bar && greet() { echo hi $1; }")
    obs = runtime.run("pwd; echo $FOO; greet you")
    assert obs.output == "/tmp\nbar\nhi you\n"
    assert obs.exit_code == 0 and not obs.session_restarted


def test_exit_code_and_interleaved_stderr(runtime):
    obs = runtime.run("echo out; echo err >&2; echo out2; exit_code_7() { return 7; }; exit_code_7")
    assert obs.output == "out\nerr\nout2\n"
    assert obs.exit_code == 7


def test_timeout_kills_the_command_and_keeps_the_session(runtime):
    runtime.run("cd /tmp && X=kept")
    obs = runtime.run("echo before; sleep 30", timeout=1)
    assert obs.timed_out and obs.exit_code == 137  # SIGKILL
    assert obs.output.startswith("before\n") and obs.duration_s < 5
    after = runtime.run("echo $X; pwd")
    assert after.output == "kept\n/tmp\n" and not after.session_restarted


def test_timeout_spares_background_jobs_of_earlier_commands(runtime):
    runtime.run("sleep 300 & echo started")
    time.sleep(0.1)
    assert runtime.run("sleep 30", timeout=1).timed_out
    assert "sleep 300" in runtime.run("jobs").output


def test_builtin_loop_past_timeout_restarts_the_shell(runtime):
    obs = runtime.run("while :; do :; done", timeout=1)
    assert obs.timed_out and any("restarted" in n for n in obs.notes)
    after = runtime.run("echo alive")
    assert after.output == "alive\n" and after.session_restarted


def test_large_output_is_cut_keeping_head_and_tail(runtime):
    obs = runtime.run("echo START; head -c 50000000 /dev/zero | tr '\\0' 'x'; echo; echo END")
    assert obs.truncated and obs.exit_code == 0
    assert obs.output.startswith("START\n") and obs.output.endswith("END\n")
    assert "bytes of output omitted" in obs.output
    assert len(obs.output) < 2 * runtime.max_output_bytes


def test_binary_output_is_decoded_with_replacement(runtime):
    obs = runtime.run("printf 'ok\\xff\\xfe\\x00done'")
    assert obs.output == "ok\ufffd\ufffd\x00done"


def test_commands_read_empty_stdin(runtime):
    obs = runtime.run("cat; read line; echo \"read=$? [$line]\"; python3 -c 'import sys; print(len(sys.stdin.read()))'")
    assert obs.output == "read=1 []\n0\n"


def test_interactive_programs_do_not_wait(runtime):
    obs = runtime.run("git log --oneline | head -1 >/dev/null; git commit --allow-empty >/dev/null 2>&1; python3; echo done",
                      timeout=10)
    assert obs.output.endswith("done\n") and not obs.timed_out


@pytest.mark.parametrize("command,status", [("exit 7", 7), ("kill -9 $$", 137)])
def test_shell_death_gives_a_fresh_session(runtime, command, status):
    runtime.run("cd /tmp")
    obs = runtime.run(command)
    assert obs.exit_code == status
    assert any("session ended" in n for n in obs.notes)
    after = runtime.run("pwd")
    assert after.session_restarted and after.output.strip() == runtime.workdir


def test_files_and_diff_include_new_files(runtime):
    runtime.write_file("pkg/new.py", "x = 'caf\u00e9'\n")
    assert runtime.read_file("pkg/new.py") == "x = 'caf\u00e9'\n"
    runtime.run("echo extra >> README.md")
    diff = runtime.diff()
    assert "+++ b/pkg/new.py" in diff and "+extra" in diff
    assert runtime.run("git status --porcelain").output.count("??") == 1  # the index was not touched


def test_diff_sees_a_same_size_edit_made_in_the_second_of_the_commit(runtime):
    # Racy git: an edit that keeps the size, made in the same second as the commit that wrote the
    # index, has the index entry's stat; only the index file's own mtime tells git to look closer.
    # A diff taken a second later through a copy of the index must still see the edit.
    for n in range(2):
        runtime.run_checked(f"printf 'value = {n}0\\n' > racy.py && git add racy.py && "
                            f"git -c user.name=t -c user.email=t@t commit -qm racy{n} && printf 'value = {n}1\\n' > racy.py"
                            " && sleep 1.1")
        diff = runtime.diff()
        assert f"-value = {n}0" in diff and f"+value = {n}1" in diff, f"attempt {n}: {diff!r}"


def test_read_missing_file_raises(runtime):
    with pytest.raises(FileNotFoundError):
        runtime.read_file("nope.txt")


def test_close_is_idempotent(runtime):
    runtime.close()
    runtime.close()
    assert runtime.closed
    with pytest.raises(RuntimeError):
        runtime.run("true")


@needs_docker
def test_network_is_blocked():
    from forager.runtime import DockerRuntime

    with DockerRuntime(SAMPLE_IMAGE) as rt:
        obs = rt.run("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)\"", timeout=20)
        assert obs.exit_code != 0 and "Network is unreachable" in obs.output
        assert rt.run("ls /sys/class/net").output.split() == ["lo"]


@needs_docker
def test_memory_hog_is_killed_and_the_env_answers():
    from forager.runtime import DockerLimits, DockerRuntime

    with DockerRuntime(SAMPLE_IMAGE, limits=DockerLimits(memory="256m")) as rt:
        obs = rt.run("python3 -c 'x = bytearray(2 * 1024**3); print(len(x))'", timeout=60)
        assert obs.exit_code == 137 and "2147483648" not in obs.output
        assert rt.run("echo alive").output == "alive\n"


@needs_docker
def test_fork_bomb_hits_the_pid_limit_and_the_env_answers():
    from forager.runtime import DockerLimits, DockerRuntime

    with DockerRuntime(SAMPLE_IMAGE, limits=DockerLimits(pids=64)) as rt:
        obs = rt.run("bomb() { bomb | bomb & }; bomb; sleep 20", timeout=5)
        assert obs.timed_out
        assert "Resource temporarily unavailable" in obs.output
        assert any("restarted" in n for n in obs.notes)
        # The cgroup never held more than the cap, and the runtime recovered.
        after = rt.run("echo alive; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max", timeout=30)
        assert after.output.splitlines()[:2] == ["alive", "64"]


@needs_docker
def test_docker_runs_as_the_image_user_and_labels_the_container():
    from forager.runtime import DockerRuntime

    with DockerRuntime(SAMPLE_IMAGE) as rt:
        assert rt.run("id -un").output == "forager\n"
        rt.write_file("owned.txt", "x\n")
        assert rt.run("stat -c %U owned.txt").output == "forager\n"
        labels = rt.container.labels
        assert labels["forager"] == "1" and labels["forager.owner.pid"].isdigit()


@needs_docker
def test_dead_container_is_a_clear_error():
    from forager.runtime import ContainerGone, DockerRuntime

    rt = DockerRuntime(SAMPLE_IMAGE)
    try:
        rt.container.remove(force=True)
        obs = rt.run("echo hi")  # the stream is gone: the session ends
        assert obs.exit_code != 0 or obs.notes
        with pytest.raises(ContainerGone):
            rt.run("echo again")
    finally:
        rt.close()
