"""The runtime side of issue-fix mining: where a commit's history is read and its tests are run.

A commit's before/after test runs happen in a runtime (`forager.runtime.registry`): a container of
the project's image (its repository has the history and the project installed editable), or a
scratch clone on this machine (`local`, which needs the package importable and its test
dependencies installed here). One runtime serves every commit: between commits the checkout goes
back to the parent with `git checkout -f` and `git clean -fd`, never `-x`: the image's install left
ignored files the package may need (a setuptools-scm `_version.py`, compiled extensions, egg-info).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from forager.core import DEFAULT_TEST_COMMAND, ForagerError, RuntimeUnavailable, Task
from forager.git import run_git
from forager.harness import PytestCommand, PytestHarness, split_diff
from forager.runtime.base import ShellRuntime, bash_quote
from forager.runtime.local import LocalRuntime

_NOT_TEST_MODULES = ("conftest.py", "__init__.py")
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception|Exit)\b:?")


class Rejected(Exception):
    """The commit is no task: `reason` (a short key that reports count) and a one-line `detail`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class History(Protocol):
    """Where commits and diffs are read: `git(*args)` returns git's output as text (bad bytes kept)."""

    def git(self, *args: str) -> str: ...


@dataclass
class HostHistory:
    """A repository on this machine, read (never written) with the user's git."""

    repo: Path

    def git(self, *args: str) -> str:
        return run_git(self.repo, *args, config={"core.quotepath": "false"}, errors="surrogateescape")


@dataclass
class RuntimeHistory:
    """The runtime's own repository (an image's /repo), read through its shell.

    Output travels as base64, so a diff comes back byte for byte (the shell's text is decoded with
    replacement characters)."""

    runtime: ShellRuntime

    def git(self, *args: str) -> str:
        quoted = " ".join(bash_quote(a) for a in args)
        try:
            out = self.runtime.run_checked(
                f"set -o pipefail; git -c core.quotepath=false {quoted} 2>/dev/null | base64 -w0", 300)
        except RuntimeError as err:
            raise ForagerError(f"git {quoted} failed in the runtime's repository at {self.runtime.workdir}") from err
        return base64.b64decode(out.strip()).decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class ImageSettings:
    """What an image says about itself: its test command, workdir and project name (labels of `forager images`)."""

    test_command: str | None
    workdir: str | None
    name: str | None


def image_settings(image: str) -> ImageSettings:
    """Read `image`'s labels and WORKDIR from the Docker engine; a clear error when it is not there."""
    import docker.errors

    from forager.runtime.docker import docker_client
    from forager.runtime.limits import missing_image_hint

    client = docker_client()
    try:
        attrs = client.images.get(image).attrs
    except docker.errors.ImageNotFound as err:
        raise RuntimeUnavailable(f"no image {image!r} in the Docker engine: {missing_image_hint(image)}") from err
    finally:
        client.close()
    config = attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    return ImageSettings(labels.get("forager.test_command") or None, config.get("WorkingDir") or None,
                         labels.get("forager.name") or None)


def open_mining_runtime(kind: str, image: str | None, workdir: str, repo: Path | None, timeout: float) -> ShellRuntime:
    """A runtime of `kind` (`docker`, `local`, `module:Class`) for the test runs, opened as for a task."""
    from forager.runtime.registry import open_runtime

    probe = Task(instance_id="forager-mine", problem_statement="", image=image, workdir=workdir,
                 local_repo=str(repo) if repo else None)
    return open_runtime(probe, kind, command_timeout=timeout)


class CommitTests:
    """Runs one commit's tests at its parent, with the fix and without, in `runtime`."""

    def __init__(self, runtime: ShellRuntime, command: PytestCommand, timeout: float) -> None:
        self.runtime, self.command, self.timeout = runtime, command, timeout
        self.harness = PytestHarness(runtime, command)

    def validate(self, parent: str, patch: str, test_patch: str) -> tuple[list[str], list[str]]:
        """(FAIL_TO_PASS, PASS_TO_PASS) from two test runs at `parent`: with the fix, then without."""
        files = sorted({f.new_path for f in split_diff(test_patch) if f.new_path and f.new_path.endswith(".py")
                        and f.new_path.rsplit("/", 1)[-1] not in _NOT_TEST_MODULES})
        if not files:
            raise Rejected("no_test_modules_changed", "the test changes are conftest.py or __init__.py only")
        # Tests are collected with the fix in place: a test module that cannot even import without the
        # fix (it imports what the fix adds) is the most common issue-fix test of all.
        self.reset_to(parent)
        self.apply(test_patch, "test_patch_does_not_apply")
        self.apply(patch, "patch_does_not_apply")
        tests = self.collect(files)
        after = self.harness.run(tests, self.timeout, hardened=True)
        if not after.complete:
            raise Rejected("tests_timed_out", f"after {self.timeout:g}s with the fix") if after.timed_out else \
                Rejected("test_run_incomplete", f"with the fix: {_last_line(after.log) or 'no end marker'}")
        self.reset_to(parent)
        self.apply(test_patch, "test_patch_does_not_apply")
        # An incomplete run (a hang or a crash without the fix) is read as the grader reads it: all failed.
        before = self.harness.run(tests, self.timeout, hardened=True)
        passing = [t for t in tests if after.passed(t)]
        fail_to_pass = [t for t in passing if not (before.complete and before.passed(t))]
        if not fail_to_pass:
            raise Rejected("no_fail_to_pass", f"{len(tests)} tests, none passes with the fix" if not passing else
                           f"{len(tests)} tests, {len(passing)} pass with the fix and all of those without it")
        return fail_to_pass, [t for t in passing if t not in fail_to_pass]

    def collect(self, files: list[str]) -> list[str]:
        command = PytestCommand(self.command.python, (*self.command.args, *files), self.command.env)
        try:
            tests = PytestHarness(self.runtime, command).collect(self.timeout)
        except ForagerError as err:
            raise Rejected("tests_do_not_collect", collection_error(str(err)) + self.hint(str(err))) from err
        if not tests:
            raise Rejected("no_tests_collected", f"pytest collected nothing from {', '.join(files)}")
        return tests

    def hint(self, output: str) -> str:
        """What to do when the tests cannot import a module on this machine."""
        missing = _MISSING_MODULE.search(output)
        if not missing or "." in missing[1] or not isinstance(self.runtime, LocalRuntime):
            return ""  # a missing submodule: its package imported, so the package is not what is missing
        top = missing[1]
        if self.runtime.run(f"test -e src/{bash_quote(top)} -o -e src/{bash_quote(top)}.py", 30).ok:
            return " (the package is under src/: run in the project's image: --image, or set PYTHONPATH=src)"
        return " (not installed on this machine: run in the project's image: --image, or install it)"

    def reset_to(self, commit: str) -> None:
        obs = self.runtime.run(f"cd {bash_quote(self.runtime.workdir)} && git -c advice.detachedHead=false "
                               f"checkout -q -f {bash_quote(commit)} 2>&1 && git clean -q -fd 2>&1", 300)
        if obs.ok:
            return
        if not self.runtime.run(f"git cat-file -e {bash_quote(commit)}^{{commit}}", 60).ok:
            where = "the image's" if getattr(self.runtime, "image", None) else "the runtime's"
            raise Rejected("commit_not_in_runtime", f"{where} repository has no commit {commit[:12]}; it holds the "
                           "history up to the commit it was built from: rebuild it from this repository")
        raise Rejected("checkout_failed", _last_line(obs.output))

    def apply(self, patch: str, reason: str) -> None:
        """`git apply`, strictly: the patches come from `git diff`, so anything less means a broken commit."""
        path = self.runtime.run_checked(f"mktemp {self.runtime.scratch_dir}/forager-mine-XXXXXXXX").strip()
        self.runtime.write_file(path, patch)
        obs = self.runtime.run(f"cd {bash_quote(self.runtime.workdir)} && git apply --whitespace=nowarn "
                               f"{bash_quote(path)} 2>&1; rc=$?; rm -f {bash_quote(path)}; [ $rc -eq 0 ]", 120)
        if not obs.ok:
            raise Rejected(reason, _last_line(obs.output))


def collection_error(output: str) -> str:
    """The line of pytest's collection output that says what went wrong (`ModuleNotFoundError: ...`)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    marked = [line[1:].strip() for line in lines if re.match(r"^E\s", line)]
    for candidates in ([m for m in marked if _ERROR_LINE.search(m)], marked,
                       [line for line in lines if _ERROR_LINE.match(line)]):
        if candidates:
            return candidates[0][:300]
    return (lines[-1] if lines else "pytest printed nothing")[:300]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def default_test_command(settings: ImageSettings | None) -> str:
    return (settings.test_command if settings else None) or DEFAULT_TEST_COMMAND
