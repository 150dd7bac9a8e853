"""pip for another interpreter: `python pip_target.py install --dry-run --python-version 3.13.5 ...`.

pip's `install` takes `--python-version` for picking wheels, but its resolver still checks each
package's `Requires-Python` against the running interpreter, and environment markers
(`tomli; python_version < "3.11"`) are evaluated for it too: a lock made on a 3.11 host for a 3.13
image would refuse a project that requires 3.12, and leave out what a 3.9 image needs. This runs pip
with both pointed at the target version (as `pip download` already does for `Requires-Python`).

`--python-version` also makes pip refuse sdists (`--only-binary=:all:`). With FORAGER_PIP_PYTHON_VERSION
set instead, the target version reaches the wheel tags, Requires-Python and markers while sdists stay
allowed (their metadata is prepared by the host's interpreter): the fallback for a dependency that
ships no wheel (big-O, pytidylib). Nothing of Forager is imported: the host's pip runs this as a script.
"""

from __future__ import annotations

import os
import sys


def _target_pip() -> None:
    """Patch pip's resolver factory and marker environment to use `--python-version`; a pip whose inside
    differs is left as it is (its own behaviour, as before)."""
    try:
        from pip._internal.cli import req_command
        from pip._internal.commands import install
        from pip._internal.models.target_python import TargetPython
        from pip._vendor.packaging import markers
    except ImportError:
        return
    original = req_command.RequirementCommand.make_resolver
    original_target = install.make_target_python
    forced = os.environ.get("FORAGER_PIP_PYTHON_VERSION")
    forced_version = tuple(int(p) for p in forced.split(".")) if forced else None

    def make_target_python(options):
        if forced_version is None or options.python_version:
            return original_target(options)
        return TargetPython(platforms=options.platforms, py_version_info=forced_version, abis=options.abis,
                            implementation=options.implementation)

    def make_resolver(*args, **kwargs):
        options = kwargs.get("options")
        version = getattr(options, "python_version", None) or forced_version
        if version:
            kwargs["py_version_info"] = kwargs.get("py_version_info") or version
            full = ".".join(str(p) for p in (*version, 0, 0)[:3])
            environment = {**markers.default_environment(), "python_version": full.rsplit(".", 1)[0],
                           "python_full_version": full, "implementation_version": full}
            markers.default_environment = lambda: dict(environment)
        return original(*args, **kwargs)

    req_command.RequirementCommand.make_resolver = staticmethod(make_resolver)
    install.make_target_python = make_target_python


if __name__ == "__main__":
    _target_pip()
    from pip._internal.cli.main import main

    sys.exit(main(sys.argv[1:]))
