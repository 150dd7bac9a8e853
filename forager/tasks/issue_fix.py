"""Issue-fix task mining: a repository's own history as SWE-bench-style tasks.

SWE-bench's recipe, applied to commits instead of pull requests:

1. A candidate is a non-merge commit whose diff against its parent changes test files and source
   (`.py` files that are not tests) together. Its diff splits by file into `test_patch` (test files)
   and `patch` (the rest, the reference fix).
2. At the parent with both patches applied, the tests of the test files it touches are collected and
   run (statuses B); at the parent with only `test_patch`, the same tests run again (statuses A),
   in the hardened mode the grader uses.
3. FAIL_TO_PASS are the tests that pass in B but not in A (a test module that cannot import without
   the fix counts as failing), PASS_TO_PASS those that pass in both. A commit with no FAIL_TO_PASS
   is no task: the fix is not what makes its tests pass.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from forager.core import DEFAULT_TEST_COMMAND, ForagerError, Task
from forager.git import git_command, run_git
from forager.harness import PytestCommand, PytestHarness, is_protected, split_diff
from forager.runtime.base import ShellRuntime, bash_quote
from forager.runtime.local import LocalRuntime

TEST_PATTERNS: tuple[str, ...] = (
    "tests/*", "test/*", "*/tests/*", "*/test/*", "test_*.py", "*_test.py", "conftest.py",
)
"""Paths that count as tests: a pattern without `/` matches any file of that name (as in grading)."""
_NOT_TEST_MODULES = ("conftest.py", "__init__.py")
_BINARY = re.compile(r"^(Binary files .* differ|GIT binary patch)$", re.MULTILINE)
_REMOTE_NAME = re.compile(r"[:/]([^/:]+)/([^/:]+?)(?:\.git)?/*$")


@dataclass
class MineConfig:
    """Which commits to try, and what the tasks mined from them carry."""

    max_tasks: int | None = None
    """Stop once this many tasks are found (default: walk every commit)."""
    max_commits: int | None = None
    """Look at this many commits at most, newest first, from HEAD."""
    test_patterns: tuple[str, ...] = TEST_PATTERNS
    """Which changed paths are tests (`fnmatch`, as `forager.harness.is_protected` reads them)."""
    test_timeout: float = 300.0
    """Seconds for one test run; also the tasks' `test_timeout`."""
    issues: dict[str, str] | None = None
    """Commit id (full or a prefix) -> issue text; commits not named here use their commit message."""
    image: str | None = None
    """The tasks' image (its `workdir` holds the repository); without one, tasks name `local_repo`."""
    workdir: str = "/repo"
    test_command: str = DEFAULT_TEST_COMMAND
    """A pytest command: mining runs it here, and the tasks carry it to grading."""


@dataclass
class MineReport:
    """What a mining run found, and why it turned the other commits down."""

    tasks: list[Task] = field(default_factory=list)
    commits_seen: int = 0
    candidates: int = 0
    """Commits that changed tests and source together, whose tests were run."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Why the other commits are no task: reason -> count."""


def split_commit_diff(diff: str, test_patterns: tuple[str, ...] = TEST_PATTERNS) -> tuple[str, str]:
    """(patch, test_patch): the files of `diff` that are not tests, and those that are."""
    source, tests = [], []
    for file_patch in split_diff(diff):
        is_test = any(is_protected(p, test_patterns) for p in file_patch.paths)
        (tests if is_test else source).append(file_patch.text)
    return "".join(source), "".join(tests)


def load_issue_texts(path: str | Path) -> dict[str, str]:
    """Issue texts by commit: a JSON object `{sha: text}`, or JSON lines `{"commit": sha, "text": text}`."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and not {"commit", "text"} <= data.keys():
        return {str(k): str(v) for k, v in data.items()}
    issues = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            issues[str(row["commit"])] = str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ForagerError(
                f"{path}:{n}: expected a JSON object {{sha: text}} or JSON lines "
                f'{{"commit": sha, "text": text}} ({err!r})'
            ) from err
    return issues


def mine_repository(
    repo_path: str | Path,
    config: MineConfig | None = None,
    *,
    on_event: Callable[[str, str], None] | None = None,
) -> MineReport:
    """Walk `repo_path`'s history from HEAD and keep the commits that make failing tests pass.

    The tests run in one scratch clone on this machine (`LocalRuntime`), with the Python that
    `config.test_command` names: it must have the repository's test dependencies, even when the
    tasks will run in `config.image`. `on_event(sha, outcome)` is called once per commit seen, with
    "task" or the reason the commit was rejected.
    """
    config = config or MineConfig()
    repo = Path(repo_path).resolve()
    command = PytestCommand.parse(config.test_command)
    if command is None:
        raise ForagerError(f"not a pytest command: {config.test_command!r} (expected `[VAR=x] python -m pytest ...`)")
    name = repository_name(repo)
    report = MineReport()
    rejected: Counter[str] = Counter()
    runtime: ShellRuntime | None = None
    try:
        for sha, parents in _commits(repo, config.max_commits):
            if config.max_tasks is not None and len(report.tasks) >= config.max_tasks:
                break
            report.commits_seen += 1
            try:
                patch, test_patch = _candidate(repo, sha, parents, config)
                report.candidates += 1
                runtime = runtime or LocalRuntime(repo, command_timeout=config.test_timeout + 60)
                fail_to_pass, pass_to_pass = _validate(runtime, command, parents[0], patch, test_patch, config)
                report.tasks.append(
                    _task(repo, name, sha, parents[0], patch, test_patch, fail_to_pass, pass_to_pass, config)
                )
                outcome = "task"
            except _Rejected as reason:
                outcome = str(reason)
                rejected[outcome] += 1
            if on_event:
                on_event(sha, outcome)
    finally:
        if runtime is not None:
            runtime.close()
    report.rejected = dict(rejected)
    return report


def repository_name(repo: Path) -> str:
    """`owner/name` of the `origin` remote's URL, else the directory's name."""
    url = git_command(repo, "remote", "get-url", "origin")
    match = _REMOTE_NAME.search(url.stdout.strip()) if url.returncode == 0 else None
    return f"{match[1]}/{match[2]}" if match else repo.name


def _git(repo: Path, *args: str) -> str:
    # the user's environment and identity (their repository, read only); paths and text as git has them
    return run_git(repo, *args, config={"core.quotepath": "false"}, errors="surrogateescape")


def _commits(repo: Path, limit: int | None) -> list[tuple[str, list[str]]]:
    """(sha, parent shas) from HEAD, newest first."""
    args = ["rev-list", "--parents", "HEAD"] + ([f"--max-count={limit}"] if limit is not None else [])
    return [(words[0], words[1:]) for words in map(str.split, _git(repo, *args).splitlines()) if words]


class _Rejected(Exception):
    """The commit is no task; the message says why (a key of `MineReport.rejected`)."""


def _candidate(repo: Path, sha: str, parents: list[str], config: MineConfig) -> tuple[str, str]:
    """(patch, test_patch) of a commit whose diff changes tests and source together."""
    if not parents:
        raise _Rejected("root_commit")
    if len(parents) > 1:
        raise _Rejected("merge_commit")
    diff = _git(repo, "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", parents[0], sha)
    if _BINARY.search(diff):
        raise _Rejected("binary_change")
    patch, test_patch = split_commit_diff(diff, config.test_patterns)
    if not test_patch.strip():
        raise _Rejected("no_tests_changed")
    if not any(p.endswith(".py") for f in split_diff(patch) for p in f.paths):
        raise _Rejected("no_source_changed")
    return patch, test_patch


def _validate(
    runtime: ShellRuntime, command: PytestCommand, parent: str, patch: str, test_patch: str, config: MineConfig
) -> tuple[list[str], list[str]]:
    """(FAIL_TO_PASS, PASS_TO_PASS) from two test runs at the parent: with the fix, then without."""
    files = sorted({f.new_path for f in split_diff(test_patch) if f.new_path and f.new_path.endswith(".py")
                    and f.new_path.rsplit("/", 1)[-1] not in _NOT_TEST_MODULES})
    if not files:
        raise _Rejected("no_test_modules_changed")
    harness = PytestHarness(runtime, command)
    # Tests are collected with the fix in place: a test module that cannot even import without the
    # fix (it imports what the fix adds) is the most common issue-fix test of all.
    _reset_to(runtime, parent)
    if not _apply(runtime, test_patch):
        raise _Rejected("test_patch_does_not_apply")
    if not _apply(runtime, patch):
        raise _Rejected("patch_does_not_apply")
    try:
        collected = PytestHarness(runtime, PytestCommand(command.python, (*command.args, *files), command.env))
        tests = collected.collect(config.test_timeout)
    except ForagerError as err:
        raise _Rejected("tests_do_not_collect") from err
    if not tests:
        raise _Rejected("no_tests_collected")
    after = harness.run(tests, config.test_timeout, hardened=True)
    if not after.complete:
        raise _Rejected("tests_timed_out" if after.timed_out else "test_run_incomplete")
    _reset_to(runtime, parent)
    _apply(runtime, test_patch)
    # An incomplete run (a hang or a crash without the fix) is read as the grader reads it: all failed.
    before = harness.run(tests, config.test_timeout, hardened=True)
    fail_to_pass = [t for t in tests if after.passed(t) and not (before.complete and before.passed(t))]
    pass_to_pass = [t for t in tests if after.passed(t) and before.complete and before.passed(t)]
    if not fail_to_pass:
        raise _Rejected("no_fail_to_pass")
    return fail_to_pass, pass_to_pass


def _reset_to(runtime: ShellRuntime, commit: str) -> None:
    runtime.run_checked(f"git -c advice.detachedHead=false checkout -q -f {bash_quote(commit)} && git clean -q -fdx")


def _apply(runtime: ShellRuntime, patch: str) -> bool:
    """`git apply`, strictly: the patches come from `git diff`, so anything less means a broken commit."""
    path = runtime.run_checked("mktemp /tmp/forager-mine-XXXXXXXX").strip()
    runtime.write_file(path, patch)
    obs = runtime.run(f"cd {bash_quote(runtime.workdir)} && git apply --whitespace=nowarn {bash_quote(path)} 2>&1; "
                      f"rc=$?; rm -f {bash_quote(path)}; [ $rc -eq 0 ]", 120)
    return obs.ok


def _task(
    repo: Path, name: str, sha: str, parent: str, patch: str, test_patch: str,
    fail_to_pass: list[str], pass_to_pass: list[str], config: MineConfig,
) -> Task:
    return Task(
        instance_id=f"{name.replace('/', '__')}__{sha[:10]}",
        kind="issue-fix",
        repo=name,
        problem_statement=_issue_text(config.issues or {}, sha) or _git(repo, "log", "-1", "--format=%B", sha).strip(),
        base_commit=parent,
        patch=patch,
        test_patch=test_patch,
        created_at=_utc(_git(repo, "log", "-1", "--format=%cI", sha).strip()),
        FAIL_TO_PASS=fail_to_pass,
        PASS_TO_PASS=pass_to_pass,
        image=config.image,
        local_repo=None if config.image else str(repo),
        workdir=config.workdir,
        test_command=config.test_command,
        test_timeout=config.test_timeout,
        metadata={"commit": sha, "source": "git-history"},
    )


def _utc(iso: str) -> str:
    """A git date as SWE-bench writes `created_at`: UTC, to the second, with a `Z`."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _issue_text(issues: dict[str, str], sha: str) -> str | None:
    """The text of the longest key that is a prefix of `sha`."""
    matches = [key for key in issues if key and sha.startswith(key.lower())]
    return issues[max(matches, key=len)] if matches else None
