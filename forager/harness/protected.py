"""The paths a patch may not touch (tests, test settings, interpreter hooks), and a diff cut into files to check them.

The grader drops an agent's changes to these paths; the task generators use the same patterns to
tell tests from the code under test.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

PROTECTED_PATHS: tuple[str, ...] = (
    # tests, wherever they live
    "tests/*", "test/*", "testing/*", "*/tests/*", "*/test/*", "*/testing/*", "test_*.py", "*_test.py",
    "conftest.py",
    # interpreter start-up hooks
    "sitecustomize.py", "usercustomize.py", "*.pth",
    # test settings (addopts, plugins, the rootdir pytest picks)
    "pytest.ini", ".pytest.ini", "pytest.toml", "tox.ini", "setup.cfg", "pyproject.toml", "noxfile.py",
    # stand-ins for the test runner itself
    "pytest.py", "pytest/*", "_pytest/*", "py.py", "pluggy/*",
)
"""Patterns of paths the agent may not change: a pattern without `/` matches any file of that name."""

_GIT_HEADER = re.compile(r'^diff --git (?:"?a/(.+?)"?) (?:"?b/(.+?)"?)$')


@dataclass
class FilePatch:
    old_path: str | None
    new_path: str | None
    text: str

    @property
    def paths(self) -> set[str]:
        return {p for p in (self.old_path, self.new_path) if p}


def split_diff(diff: str) -> list[FilePatch]:
    """A unified diff (git's or plain) cut into one patch per file, with the paths it touches."""
    lines = diff.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("diff --git ")]
    if not starts:  # a plain unified diff: each file starts at a `--- ` line followed by `+++ `
        starts = [i for i, line in enumerate(lines[:-1]) if line.startswith("--- ") and lines[i + 1].startswith("+++ ")]
    patches = []
    for n, start in enumerate(starts):
        chunk = lines[start: starts[n + 1] if n + 1 < len(starts) else len(lines)]
        old = new = None
        header = _GIT_HEADER.match(chunk[0].rstrip("\n"))
        if header:
            old, new = header.group(1), header.group(2)
        for line in chunk:
            if line.startswith("@@"):
                break
            if line.startswith("--- "):
                old = _strip_prefix(line[4:], "a/")
            elif line.startswith("+++ "):
                new = _strip_prefix(line[4:], "b/")
            elif line.startswith("rename from "):
                old = line[12:].rstrip("\n")
            elif line.startswith("rename to "):
                new = line[10:].rstrip("\n")
        patches.append(FilePatch(old, new, "".join(chunk)))
    return patches


def _strip_prefix(path: str, prefix: str) -> str | None:
    path = path.rstrip("\n").split("\t")[0].strip('"')
    if path == "/dev/null":
        return None
    return path[len(prefix):] if path.startswith(prefix) else path


def is_protected(path: str, patterns: Iterable[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p) for p in patterns)
