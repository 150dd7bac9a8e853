"""The project's install at the commit checked out: what the agent sees and what the grader runs must agree.

An image's repo layer installs the project (editable) at the image's commit and records how
(`REINSTALL`) and where (`INSTALLED_COMMIT`). A task that starts at another commit (an issue fix mined
from the history) would otherwise show that commit's metadata (the version in `*.egg-info`, the
editable `*.dist-info`, a generated `_version.py`: a later release tells the future) and run with
its build products. Both the episode's checkout and the grader's call `refresh_install`.
"""

from __future__ import annotations

from forager.runtime.base import ShellRuntime

REINSTALL = "/forager/reinstall"
"""The repo layer's install step as a script, run again (as the image's user) at another commit."""
INSTALLED_COMMIT = "/forager/installed-commit"
"""The commit the install was last made at (written by the layer and by `REINSTALL`)."""

# Stale egg-info goes first, as a renamed project would leave its old one behind.
REFRESH_INSTALL = (
    f'if [ -x {REINSTALL} ] && [ "$(cat {INSTALLED_COMMIT} 2>/dev/null)" != "$(git rev-parse HEAD)" ]; then '
    "find . -maxdepth 3 -name .git -prune -o -type d -name '*.egg-info' -prune -exec rm -rf {} + && "
    f"{REINSTALL} 2>&1 && echo forager-reinstalled; fi"
)


def refresh_install(runtime: ShellRuntime) -> bool:
    """Make the image's install again if it was made at another commit than HEAD's; True if it ran.

    Images built before the install was recorded (no `REINSTALL`) and local runtimes are left as
    they are: `tasks.validate` reports an install of another commit.
    """
    out = runtime.run_checked(REFRESH_INSTALL, timeout=1800)
    if "forager-reinstalled" not in out:
        return False
    # A version the image pretended for setuptools-scm is the image commit's: not the base's.
    runtime.run("unset SETUPTOOLS_SCM_PRETEND_VERSION", 10)
    return True
