"""Issue-fix task mining: a repository's own history as SWE-bench-style tasks.

SWE-bench's recipe, applied to commits instead of pull requests:

1. A candidate is a non-merge commit whose diff against its parent changes test files and source
   (`.py` files that are not tests) together. Its diff splits by file into `test_patch` (test files)
   and `patch` (the rest, the reference fix).
2. At the parent with both patches applied, the tests of the test files it touches are collected and
   run (statuses B); at the parent with only `test_patch`, the same tests run again (statuses A),
   in the hardened mode the grader uses. The runs happen in a runtime (`issue_runs`): the project's
   image, where it is installed with its test dependencies, or a scratch clone on this machine.
3. FAIL_TO_PASS are the tests that pass in B but not in A (a test module that cannot import without
   the fix counts as failing), PASS_TO_PASS those that pass in both. A commit with no FAIL_TO_PASS
   is no task: the fix is not what makes its tests pass.

Every commit seen gets an outcome (`CommitOutcome`): a task, or the reason it is none and a detail.
The statement is the text of the issue the commit links to (`issue_links`), else its message.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from forager.core import ForagerError, Task
from forager.files import atomic_output
from forager.git import git_command
from forager.harness import PytestCommand, is_protected, split_diff
from forager.runtime.base import ShellRuntime
from forager.tasks.issue_links import IssueFetcher, IssueTexts, Statement, StatementSource, load_issue_texts
from forager.tasks.issue_runs import (
    CommitTests,
    History,
    HostHistory,
    Rejected,
    RuntimeHistory,
    default_test_command,
    image_settings,
    open_mining_runtime,
)

TEST_PATTERNS: tuple[str, ...] = (
    "tests/*", "test/*", "*/tests/*", "*/test/*", "test_*.py", "*_test.py", "conftest.py",
)
"""Paths that count as tests: a pattern without `/` matches any file of that name (as in grading)."""
_BINARY = re.compile(r"^(Binary files .* differ|GIT binary patch)$", re.MULTILINE)
_REMOTE_NAME = re.compile(r"[:/]([^/:]+)/([^/:]+?)(?:\.git)?/*$")
_CANDIDATE_REASONS = {"root_commit", "merge_commit", "binary_change", "not_utf8", "no_tests_changed",
                      "no_source_changed"}
"""Reasons found from the diff alone; every other one came from running the commit's tests."""


@dataclass
class MineConfig:
    """Which commits to try, where their tests run, and what the tasks mined from them carry."""

    max_tasks: int | None = None
    """Stop once this many tasks are found (default: walk every commit)."""
    max_commits: int | None = None
    """Look at this many commits at most, newest first, from HEAD."""
    test_patterns: tuple[str, ...] = TEST_PATTERNS
    """Which changed paths are tests (`fnmatch`, as `forager.harness.is_protected` reads them)."""
    test_timeout: float = 300.0
    """Seconds for one test run; also the tasks' `test_timeout`."""
    issues: IssueTexts | None = None
    """Issue texts by commit and by issue number (`load_issue_texts`)."""
    issue_url: str | None = None
    """An URL template for linked issues' texts, e.g. `https://api.github.com/repos/o/n/issues/{number}`."""
    issue_timeout: float = 10.0
    image: str | None = None
    """The image whose containers run the tests (and the tasks); without one, a scratch clone of the repository."""
    runtime: str | None = None
    """`docker`, `local` or `module:Class` (default: `docker` with an image, else `local`)."""
    workdir: str | None = None
    """Where the repository lives in the image (default: the image's WORKDIR, else /repo)."""
    test_command: str | None = None
    """A pytest command (default: the image's `forager.test_command` label, else Forager's); tasks carry it."""
    repo_name: str | None = None
    """The tasks' `repo` (default: the `origin` remote's owner/name, the image's project, or the directory)."""
    fresh_runtime: bool = False
    """A fresh container (or clone) for each commit whose tests run, instead of one reset between commits:
    slower (`bench/mine_image.py` measures it), for suites that leave state outside the repository."""


@dataclass
class CommitOutcome:
    """What became of one commit: `task`, or the reason it is none, with a one-line detail."""

    commit: str
    subject: str
    outcome: str
    detail: str = ""
    duration_s: float = 0.0
    instance_id: str | None = None
    statement_source: str | None = None
    """For a task: `issue` or `commit_message`."""

    @property
    def ran_tests(self) -> bool:
        return self.outcome not in _CANDIDATE_REASONS


@dataclass
class MineReport:
    """What a mining run found, commit by commit."""

    tasks: list[Task] = field(default_factory=list)
    outcomes: list[CommitOutcome] = field(default_factory=list)
    runtime: str = ""
    """Where the tests ran: `docker forager/repo-x:HASH` or `local /path`."""
    test_command: str = ""
    issue_notes: list[str] = field(default_factory=list)
    """Why linked issues' texts could not be used (not in the file, a failed fetch)."""
    interrupted: bool = False
    """The walk was stopped (Ctrl-C) before its end: the tasks are those found until then."""

    @property
    def commits_seen(self) -> int:
        return len(self.outcomes)

    @property
    def candidates(self) -> int:
        """Commits that changed tests and source together, whose tests were (to be) run."""
        return sum(o.ran_tests for o in self.outcomes)

    @property
    def rejected(self) -> dict[str, int]:
        """Why the other commits are no task: reason -> count."""
        return dict(Counter(o.outcome for o in self.outcomes if o.outcome != "task"))

    @property
    def from_commit_messages(self) -> int:
        """Tasks whose statement is the commit message (no linked issue's text)."""
        return sum(t.metadata.get("statement_source") == "commit_message" for t in self.tasks)

    def why_no_tasks(self) -> str:
        """One line: the reasons that dominate, those of commits whose tests ran first, with a detail each."""
        ran = Counter(o.outcome for o in self.outcomes if o.ran_tests)
        rest = Counter(o.outcome for o in self.outcomes if not o.ran_tests)
        parts = []
        for reason, n in [*ran.most_common(3), *rest.most_common(3 if not ran else 1)]:
            details = Counter(o.detail for o in self.outcomes if o.outcome == reason and o.detail)
            parts.append(f"{n} {reason}" + (f" ({details.most_common(1)[0][0]})" if details and reason in ran else ""))
        if not parts:
            return "no commits were seen"
        return f"no tasks from {self.commits_seen} commits: " + "; ".join(parts)

    def write_jsonl(self, path: str | Path) -> Path:
        """One JSON object per commit seen, newest first."""
        with atomic_output(path) as out:
            for outcome in self.outcomes:
                out.write(json.dumps(asdict(outcome), ensure_ascii=False) + "\n")
        return Path(path)


def split_commit_diff(diff: str, test_patterns: tuple[str, ...] = TEST_PATTERNS) -> tuple[str, str]:
    """(patch, test_patch): the files of `diff` that are not tests, and those that are."""
    source, tests = [], []
    for file_patch in split_diff(diff):
        is_test = any(is_protected(p, test_patterns) for p in file_patch.paths)
        (tests if is_test else source).append(file_patch.text)
    return "".join(source), "".join(tests)


def mine_repository(
    repo_path: str | Path | None,
    config: MineConfig | None = None,
    *,
    on_event: Callable[[CommitOutcome], None] | None = None,
) -> MineReport:
    """Walk the history from HEAD and keep the commits that make failing tests pass.

    Commits and diffs are read from `repo_path` on this machine or, without one, from the image's
    repository. The tests run in `config.runtime`: a container of `config.image` (the default when
    an image is given), or a scratch clone of `repo_path` whose tests use this machine's Python.
    `on_event` is called once per commit seen, with its outcome.
    """
    config = resolve_config(repo_path, config or MineConfig())
    repo = Path(repo_path).resolve() if repo_path is not None else None
    command = PytestCommand.parse(config.test_command or "")
    if command is None:
        raise ForagerError(f"not a pytest command: {config.test_command!r} (expected `[VAR=x] python -m pytest ...`)")
    fetcher = IssueFetcher(config.issue_url, config.repo_name, config.issue_timeout) if config.issue_url else None
    statements = StatementSource(config.issues, fetcher, config.repo_name)
    where = f"{config.runtime} {config.image}" if config.image and config.runtime != "local" else \
        f"{config.runtime} {repo}"
    report = MineReport(runtime=where, test_command=config.test_command or "")
    workdir = config.workdir or "/repo"
    runtime: ShellRuntime | None = None

    def opened() -> ShellRuntime:
        nonlocal runtime
        if runtime is None:
            runtime = open_mining_runtime(config.runtime or "local", config.image, workdir, repo,
                                          config.test_timeout + 60)
        return runtime

    try:
        history: History = HostHistory(repo) if repo is not None else RuntimeHistory(opened())
        for sha, parents in _commits(history, config.max_commits):
            if config.max_tasks is not None and len(report.tasks) >= config.max_tasks:
                break
            outcome = _mine_commit(history, opened, command, sha, parents, config, statements, report)
            report.outcomes.append(outcome)
            if runtime is not None and (outcome.outcome in ("tests_timed_out", "mining_error") or
                                        config.fresh_runtime and outcome.ran_tests):
                started = time.monotonic()
                runtime.reset()  # whatever a (hung) run left behind goes with the container (or the clone)
                outcome.duration_s = round(outcome.duration_s + time.monotonic() - started, 3)
            if on_event:
                on_event(outcome)
    except KeyboardInterrupt:
        report.interrupted = True  # the tasks found so far are kept: the caller writes them
    finally:
        if runtime is not None:
            runtime.close()
    return report


def resolve_config(repo_path: str | Path | None, config: MineConfig) -> MineConfig:
    """`config` with its defaults filled in from the image (labels, WORKDIR) and the repository."""
    runtime = config.runtime or ("docker" if config.image else "local")
    if repo_path is None and not config.image:
        raise ForagerError("nothing to mine: give a repository path, or an image (--image) whose repository to read")
    if repo_path is None and runtime == "local":
        raise ForagerError("the local runtime clones a repository on this machine: give its path, or mine in "
                           "the image (--runtime docker)")
    if repo_path is not None and not (Path(repo_path) / ".git").exists():
        raise ForagerError(f"{repo_path} is not a git repository")
    if config.issue_url:
        IssueFetcher(config.issue_url, None)  # a bad template fails here, before any test runs
    settings = image_settings(config.image) if config.image and runtime == "docker" else None
    name = config.repo_name or (repository_name(Path(repo_path).resolve()) if repo_path is not None else None) \
        or (settings.name if settings else None) or (config.image or "").split(":")[0].rsplit("/", 1)[-1]
    return replace(config, runtime=runtime, repo_name=name,
                   workdir=config.workdir or (settings.workdir if settings else None) or "/repo",
                   test_command=config.test_command or default_test_command(settings))


def _mine_commit(history: History, runtime: Callable[[], ShellRuntime], command: PytestCommand, sha: str,
                 parents: list[str], config: MineConfig, statements: StatementSource,
                 report: MineReport) -> CommitOutcome:
    """One commit's outcome: its diff split and, for a candidate, its tests run."""
    started = time.monotonic()
    message = history.git("log", "-1", "--format=%B", sha).strip()
    outcome = CommitOutcome(sha, message.splitlines()[0] if message else "", "task")
    try:
        patch, test_patch = _candidate(history, sha, parents, config)
        fail_to_pass, pass_to_pass = CommitTests(runtime(), command, config.test_timeout).validate(
            parents[0], patch, test_patch)
    except Rejected as rejected:
        outcome.outcome, outcome.detail = rejected.reason, rejected.detail
    except Exception as err:  # noqa: BLE001 - the runtime failed (a container gone): the walk goes on
        outcome.outcome, outcome.detail = "mining_error", f"{type(err).__name__}: {str(err)[:300]}"
    else:
        statement = statements.statement(sha, message)
        report.issue_notes += statement.notes
        task = _task(history, sha, parents[0], patch, test_patch, fail_to_pass, pass_to_pass, config, statement)
        report.tasks.append(task)
        outcome.instance_id, outcome.statement_source = task.instance_id, statement.source
        outcome.detail = f"{len(fail_to_pass)} FAIL_TO_PASS, {len(pass_to_pass)} PASS_TO_PASS" + \
            (f"; statement from {', '.join(statement.issues)}" if statement.source == "issue" and statement.issues
             else "; statement: the commit message" if statement.source == "commit_message" else "")
    outcome.duration_s = round(time.monotonic() - started, 3)
    return outcome


def repository_name(repo: Path) -> str:
    """`owner/name` of the `origin` remote's URL, else the directory's name."""
    url = git_command(repo, "remote", "get-url", "origin")
    match = _REMOTE_NAME.search(url.stdout.strip()) if url.returncode == 0 else None
    return f"{match[1]}/{match[2]}" if match else repo.name


def _commits(history: History, limit: int | None) -> list[tuple[str, list[str]]]:
    """(sha, parent shas) from HEAD (as it was when mining began), newest first."""
    head = history.git("rev-parse", "--verify", "HEAD^{commit}").strip()
    args = ["rev-list", "--parents", head] + ([f"--max-count={limit}"] if limit is not None else [])
    return [(words[0], words[1:]) for words in map(str.split, history.git(*args).splitlines()) if words]


def _candidate(history: History, sha: str, parents: list[str], config: MineConfig) -> tuple[str, str]:
    """(patch, test_patch) of a commit whose diff changes tests and source together."""
    if not parents:
        raise Rejected("root_commit")
    if len(parents) > 1:
        raise Rejected("merge_commit", f"{len(parents)} parents")
    diff = history.git("diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", parents[0], sha)
    binary = _BINARY.search(diff)
    if binary:
        raise Rejected("binary_change", binary[0][:200])
    try:
        diff.encode("utf-8")
    except UnicodeEncodeError as err:
        raise Rejected("not_utf8", "the diff is not UTF-8 text") from err
    patch, test_patch = split_commit_diff(diff, config.test_patterns)
    files = [p for f in split_diff(patch) for p in f.paths]
    if not test_patch.strip():
        n = len(set(files))
        raise Rejected("no_tests_changed", f"{n} file{'s' if n != 1 else ''} changed, none a test")
    if not any(p.endswith(".py") for p in files):
        raise Rejected("no_source_changed", "only tests changed" if not files else
                       f"no .py file outside the tests ({', '.join(sorted(set(files))[:3])})")
    return patch, test_patch


def _task(history: History, sha: str, parent: str, patch: str, test_patch: str,
          fail_to_pass: list[str], pass_to_pass: list[str], config: MineConfig, statement: Statement) -> Task:
    """The task; it names the image, else the local repository."""
    name = config.repo_name or "repo"
    local = history.repo if config.image is None and isinstance(history, HostHistory) else None
    return Task(
        instance_id=f"{name.replace('/', '__')}__{sha[:10]}",
        kind="issue-fix",
        repo=name,
        problem_statement=statement.text,
        base_commit=parent,
        patch=patch,
        test_patch=test_patch,
        created_at=_utc(history.git("log", "-1", "--format=%cI", sha).strip()),
        FAIL_TO_PASS=fail_to_pass,
        PASS_TO_PASS=pass_to_pass,
        image=config.image,
        local_repo=str(local) if local else None,
        workdir=config.workdir or "/repo",
        test_command=config.test_command or "",
        test_timeout=config.test_timeout,
        metadata={"commit": sha, "source": "git-history", "statement_source": statement.source,
                  **({"issues": statement.issues} if statement.issues else {})},
    )


def _utc(iso: str) -> str:
    """A git date as SWE-bench writes `created_at`: UTC, to the second, with a `Z`."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["CommitOutcome", "IssueTexts", "MineConfig", "MineReport", "load_issue_texts", "mine_repository",
           "repository_name", "resolve_config", "split_commit_diff"]
