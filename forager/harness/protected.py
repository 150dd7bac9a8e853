"""The paths a patch may not touch (tests, test settings, interpreter hooks), and a diff cut into files to check them.

The grader drops an agent's changes to these paths; the task generators use the same patterns to
tell tests from the code under test.
"""

from __future__ import annotations

import fnmatch
import re
import sys
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


TEST_TOOL_MODULES: frozenset[str] = frozenset({
    "pytest", "_pytest", "py", "pluggy", "iniconfig", "packaging", "exceptiongroup", "tomli", "pygments",
    "colorama", "coverage", "xdist", "execnet", "hypothesis", "_hypothesis_pytestplugin", "typing_extensions",
    "sitecustomize", "usercustomize", "attr", "attrs", "sortedcontainers",
})
"""What pytest and its plugins import: a module of that name first on sys.path would be theirs."""

SHADOWED_MODULES: frozenset[str] = frozenset(sys.stdlib_module_names) | TEST_TOOL_MODULES | frozenset({
    # the standard library of other Pythons than this one (removed in 3.12/3.13, or new there)
    "distutils", "imp", "asynchat", "asyncore", "smtpd", "cgi", "cgitb", "crypt", "telnetlib", "nntplib", "pipes",
    "sndhdr", "spwd", "sunau", "uu", "xdrlib", "aifc", "audioop", "chunk", "imghdr", "mailcap", "msilib", "nis",
    "ossaudiodev", "lib2to3", "_colorize", "_pyrepl", "_interpreters", "_interpqueues", "_interpchannels",
    "_suggestions", "_sysconfig", "_opcode_metadata", "_pylong", "_ios_support", "_apple_support",
})
"""Top-level names a new module in the repository may not take (this Python's standard library is a
superset of most images' up to 3.11; the removed and newer names are added by hand)."""

IMPORT_ROOTS: tuple[str, ...] = ("", "src/", "lib/")
"""Directories of a repository that are on sys.path when its tests run (the root; src and lib layouts)."""

_MODULE_SUFFIXES = (".py", ".pyc", ".pyw", ".pyd", ".so")


def refusal(path: str) -> str | None:
    """Why no patch may write `path`, whatever the task (None if it may): the rules that protect the
    grader's own machinery rather than the task's tests."""
    parts = path.split("/")
    if (not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path
            or any(ord(c) < 32 or ord(c) == 127 for c in path)):
        return "unsafe path (absolute, `..`, empty part, backslash or control character)"
    for part in parts:
        low = part.lower().rstrip(". ")
        if low == ".git":
            return "git metadata (.git)"
        if low in (".gitattributes", ".gitmodules"):
            return "git settings (.gitattributes, .gitmodules)"
        if low.endswith((".dist-info", ".egg-info", ".egg-link")):
            return "package metadata (.dist-info, .egg-info): entry points load plugins"
    if parts[-1].lower().endswith(".pth"):
        return "interpreter start-up hook (.pth)"
    return None


def shadowed_module(path: str) -> str | None:
    """The standard-library or test-tool module that `path` would define first on sys.path, if any."""
    for root in IMPORT_ROOTS:
        if not path.startswith(root):
            continue
        parts = path[len(root):].split("/")
        if len(parts) > 1:
            name = parts[0]
        elif parts[0].endswith(_MODULE_SUFFIXES):
            name = parts[0].split(".", 1)[0]
        else:
            continue
        if name in SHADOWED_MODULES or name.startswith(("pytest_", "_pytest")):
            return name
    return None

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
