"""Put a runtime's repository in a task's starting state, the same way for the agent and the grader."""

from __future__ import annotations

import functools
import logging

from forager.core import Task
from forager.images.git_leaks import KeptHistory, Leaks, find_leaks, keep_base_history
from forager.harness.install import refresh_install
from forager.runtime.base import Preparation, ShellRuntime, bash_quote

log = logging.getLogger(__name__)

_COMMIT = "git -c user.name=forager -c user.email=forager@localhost commit -q --no-verify --allow-empty -m"

def checkout_task(runtime: ShellRuntime, task: Task) -> str:
    """Check out `task.base_commit`, apply its setup patch, and return the commit the agent starts from.

    The agent must find no trace of the fix. With a setup patch (a planted bug), the history is
    replaced by one commit of the resulting tree: the parent commit would otherwise hold the fix.
    Without one (an issue fix from a repository's history), the history up to the base commit stays,
    on a branch `main` with the tags of earlier commits, and everything else goes: other refs,
    remotes, reflogs, every object the base history does not reach (`images.git_leaks`, which
    proves it and raises `LeakError` otherwise); then the image's install is made again at the base
    commit, so the versions the agent sees are the base's.
    """
    runtime.run_checked(
        # Not through replace refs: `git replace BASE FIX` would have the base's files be the fix's.
        f"git --no-replace-objects -c advice.detachedHead=false checkout -q -f {bash_quote(task.base_commit)}"
        " && git clean -q -fd"
    )
    if task.setup_patch:
        patch = runtime.scratch_path("setup.patch")
        runtime.write_file(patch, task.setup_patch)
        runtime.run_checked(
            f"git apply --whitespace=nowarn {bash_quote(patch)} && rm -f {bash_quote(patch)} && "
            f"rm -rf .git && git init -q -b main && git add -A && "
            f"{_COMMIT} {bash_quote(f'{task.repo or task.instance_id}')}"
        )
    else:
        kept = keep_base_history(functools.partial(runtime.run_checked, timeout=1800))
        if kept.note:  # a rebuilt store is routine for partial clones; a lost history is worth a warning
            log.log(logging.WARNING if kept.how == "tree" else logging.INFO, "task %s: %s", task.instance_id, kept.note)
        refresh_install(runtime)
    return runtime.run_checked("git rev-parse HEAD").strip()


def checkout_preparation(task: Task) -> Preparation:
    """`checkout_task` for `task` as a `Preparation`, which a warm pool can run before the reset asks."""
    return Preparation(f"checkout:{task.instance_id}:{task.start_digest}", lambda runtime: checkout_task(runtime, task))


def leaked_objects(runtime: ShellRuntime, base: str = "HEAD", examples: int = 5) -> Leaks:
    """What the runtime's repository holds beyond `base`'s history (`Leaks.clean` when nothing)."""
    return find_leaks(functools.partial(runtime.run_checked, timeout=600), base, examples)


__all__ = ["KeptHistory", "Leaks", "checkout_preparation", "checkout_task", "leaked_objects", "refresh_install"]
