"""The local runtime shares the host's /tmp: every scratch file Forager writes must still be private."""

from __future__ import annotations

import os

from forager.agent.collect import CollectConfig, PolicySpec, collect
from forager.images.sample import sample_repo, sample_tasks
from forager.runtime.local import LocalRuntime
from forager.tasks.checkout import checkout_task
from forager.trajectories.store import read_trajectories


def test_each_local_runtime_has_its_own_scratch_directory_and_tmpdir():
    repo = sample_repo().path
    with LocalRuntime(repo) as first, LocalRuntime(repo) as second:
        assert first.scratch_dir != second.scratch_dir
        assert first.scratch_path("setup.patch") != second.scratch_path("setup.patch")
        for runtime in (first, second):
            assert runtime.run("echo $TMPDIR").output.strip() == runtime.scratch_dir
            made = runtime.run("mktemp").output.strip()  # the agent's and the tests' temporary files too
            assert made.startswith(runtime.scratch_dir + "/")
        scratch = first.scratch_dir
    assert not os.path.exists(scratch)  # removed with its runtime


def test_concurrent_checkouts_do_not_share_a_setup_patch():
    # Two different planted bugs checked out at the same moment: each runtime must get its own.
    tasks = sample_tasks(None)[:2]
    repo = sample_repo().path
    with LocalRuntime(repo) as first, LocalRuntime(repo) as second:
        checkout_task(first, tasks[0])
        checkout_task(second, tasks[1])
        for runtime, task in ((first, tasks[0]), (second, tasks[1])):
            assert runtime.diff("HEAD") == ""
            assert not os.listdir(runtime.scratch_dir)  # the setup patch is gone once applied
            fixed = runtime.run(f"git apply --check -R - <<'EOF'\n{task.setup_patch}EOF").ok
            assert fixed, f"{task.instance_id}: the runtime does not hold its own planted bug"


def test_the_quickstart_collection_on_the_local_runtime_resolves_every_reference_episode(tmp_path):
    # The README's first command on a machine without Docker: the reference policy replays each
    # known fix, so every episode must be resolved, run after run, with two workers side by side.
    tasks = sample_tasks(None)
    for attempt in range(3):
        out = tmp_path / f"run-{attempt}"
        stats = collect(tasks, out, policy=PolicySpec(name="reference"),
                        config=CollectConfig(samples_per_task=2, workers=2, runtime="local"))
        trajectories = list(read_trajectories([out]))
        assert len(trajectories) == 2 * len(tasks)
        unresolved = [(t.task_id, t.termination, t.reward_details) for t in trajectories if not t.resolved]
        assert not unresolved and stats.resolved == 2 * len(tasks), f"attempt {attempt}: {unresolved}"


SIGTERM_CHILD = """
import sys, threading
from forager.runtime.local import LocalRuntime

def churn():
    while True:  # a creation or a re-clone in flight when the signal comes
        runtime = LocalRuntime(sys.argv[1])
        runtime.reset()
        runtime.close()

for _ in range(4):
    threading.Thread(target=churn, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def test_sigterm_leaves_no_scratch_directory_even_while_runtimes_reset(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from forager.runtime.local import OWNER_FILE, SCRATCH_PREFIX

    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(sample_repo().path)],
                             stdout=subprocess.PIPE, text=True)

    def owned() -> list[Path]:
        found = []
        for scratch in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
            try:
                labels = json.loads((scratch / OWNER_FILE).read_text())
            except (OSError, ValueError):
                continue
            if labels.get("forager.owner.pid") == str(child.pid):
                found.append(scratch)
        return found

    assert child.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while len(owned()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(owned()) >= 2
    time.sleep(1.0)  # resets under way
    child.send_signal(signal.SIGTERM)
    assert child.wait(60) == -signal.SIGTERM
    assert owned() == []
