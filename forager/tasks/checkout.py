"""Put a runtime's repository in a task's starting state, the same way for the agent and the grader."""

from __future__ import annotations

from forager.core import Task
from forager.runtime.base import ShellRuntime, q

_COMMIT = "git -c user.name=forager -c user.email=forager@localhost commit -q --no-verify --allow-empty -m"


def checkout_task(runtime: ShellRuntime, task: Task) -> str:
    """Check out `task.base_commit`, apply its setup patch, and return the commit the agent starts from.

    With a setup patch (a planted bug), the history is replaced by one commit of the resulting tree:
    the parent commit would otherwise hold the fix.
    """
    runtime.run_checked(
        f"git -c advice.detachedHead=false checkout -q -f {q(task.base_commit)} && git clean -q -fdx"
    )
    if task.setup_patch:
        runtime.write_file("/tmp/forager-setup.patch", task.setup_patch)
        runtime.run_checked(
            "git apply --whitespace=nowarn /tmp/forager-setup.patch && rm -f /tmp/forager-setup.patch && "
            f"rm -rf .git && git init -q -b main && git add -A && {_COMMIT} {q(f'{task.repo or task.instance_id}')}"
        )
    return runtime.run_checked("git rev-parse HEAD").strip()
