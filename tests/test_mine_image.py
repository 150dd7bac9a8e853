"""Mining a src-layout project's history: on this machine (where the package does not import) and in
the project's image (where it does), every commit's outcome reported, statements from linked issues
read from a file or fetched from a real HTTP server, and the tasks valid when graded in the image."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from forager.core import ForagerError
from forager.runtime import docker_available
from forager.tasks.issue_fix import MineConfig, MineReport, mine_repository
from forager.tasks.issue_links import (
    IssueFetcher,
    IssueRef,
    IssueTexts,
    StatementSource,
    linked_issues,
    load_issue_texts,
)

from test_issue_fix import History, build_history

STATS = "def mean(values):\n    return sum(values) / len(values)\n\n\ndef clamp(x, lo, hi):\n    return max(lo, x)\n"
MEAN_FIXED = STATS.replace("    return sum(values) / len(values)",
                           "    if not values:\n        return 0.0\n    return sum(values) / len(values)")
CLAMP_FIXED = MEAN_FIXED.replace("return max(lo, x)", "return min(hi, max(lo, x))")
TESTS = "from tallykit import clamp, mean\n\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n"
T_EMPTY = TESTS + "\n\ndef test_mean_empty():\n    assert mean([]) == 0.0\n"
T_LOW = T_EMPTY + "\n\ndef test_clamp_low():\n    assert clamp(-5, 0, 10) == 0\n"
T_HIGH = T_LOW + "\n\ndef test_clamp_high():\n    assert clamp(50, 0, 10) == 10\n"
MEDIAN = ("\n\ndef median(values):\n    ordered = sorted(values)\n    middle = len(ordered) // 2\n"
          "    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2\n")
PYPROJECT = ('[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
             '[project]\nname = "tallykit"\nversion = "0.1.0"\nrequires-python = ">=3.8"\n')
DOCSTRING = '"""Statistics."""\n\n'

# A src layout: the tests import `tallykit`, which only an install (or PYTHONPATH=src) makes importable.
HISTORY: list[tuple[dict[str, str], str]] = [
    ({"pyproject.toml": PYPROJECT, "src/tallykit/__init__.py": "from tallykit.stats import clamp, mean\n",
      "src/tallykit/stats.py": STATS, "tests/test_stats.py": TESTS, "README.md": "# tallykit\n"}, "Add tallykit"),
    ({"src/tallykit/stats.py": MEAN_FIXED, "tests/test_stats.py": T_EMPTY}, "Fix mean of an empty list\n\nFixes #12"),
    ({"README.md": "# tallykit\n\nMeans and clamps.\n"}, "Document tallykit"),
    ({"tests/test_stats.py": T_LOW}, "Test clamp's lower bound"),
    ({"src/tallykit/stats.py": CLAMP_FIXED, "tests/test_stats.py": T_HIGH},
     "Clamp to the upper bound too (closes gh-5)"),
    ({"src/tallykit/stats.py": DOCSTRING + CLAMP_FIXED,
      "tests/test_stats.py": T_HIGH + "\n\ndef test_mean_single():\n    assert mean([4]) == 4\n"},
     "Docstring, and a test that already passed"),
    ({"src/tallykit/stats.py": DOCSTRING + CLAMP_FIXED + MEDIAN,
      "src/tallykit/__init__.py": "from tallykit.stats import clamp, mean, median\n",
      "tests/test_median.py": "from tallykit import median\n\n\ndef test_odd():\n"
                              "    assert median([3, 1, 2]) == 2\n\n\n"
                              "def test_even():\n    assert median([4, 1, 3, 2]) == 2.5\n"},
     "Add median\n\nResolves: example/tallykit#9"),
    ({"src/tallykit/stats.py": DOCSTRING + CLAMP_FIXED + MEDIAN + "\n# modes come next\n",
      "tests/test_modes.py": "from tallykit.modes import mode\n\n\n"
                             "def test_mode():\n    assert mode([1, 1, 2]) == 1\n"},
     "Start on modes"),
]
SUBJECT_OUTCOMES = [  # newest first, as mining walks
    ("Start on modes", "tests_do_not_collect"),
    ("Add median", "task"),
    ("Docstring, and a test that already passed", "no_fail_to_pass"),
    ("Clamp to the upper bound too (closes gh-5)", "task"),
    ("Test clamp's lower bound", "no_source_changed"),
    ("Document tallykit", "no_tests_changed"),
    ("Fix mean of an empty list", "task"),
    ("Add tallykit", "root_commit"),
]
ISSUE_12 = {"number": 12, "title": "mean([]) raises ZeroDivisionError", "body": "It should return 0.0."}
ISSUE_5_JSON = {"number": 5, "title": "clamp ignores hi", "body": "clamp(50, 0, 10) gives 50.", "state": "closed"}
ISSUE_9_TEXT = "Please add a median function."


@pytest.fixture(scope="module")
def tallykit(tmp_path_factory) -> History:
    repo = build_history(tmp_path_factory.mktemp("mine-src") / "tallykit", HISTORY)
    repo.git("remote", "set-url", "origin", "https://github.com/example/tallykit.git")
    return repo


class IssueServer:
    """A real HTTP server: `/issues/5` as GitHub's JSON, `/issues/9` as plain text, `/slow/N` too slow."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests.append(self.path)
                if self.path.startswith("/slow/"):
                    time.sleep(1.5)
                if self.path.endswith("/issues/5"):
                    self._send(200, "application/json; charset=utf-8", json.dumps(ISSUE_5_JSON))
                elif self.path.endswith("/issues/9"):
                    self._send(200, "text/plain; charset=utf-8", ISSUE_9_TEXT + "\n")
                else:
                    self._send(404, "application/json", json.dumps({"message": "Not Found"}))

            def _send(self, code: int, kind: str, body: str) -> None:
                data = body.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def issue_server() -> Iterator[IssueServer]:
    server = IssueServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def issues_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("issues") / "issues.jsonl"
    path.write_text(json.dumps(ISSUE_12) + "\n")
    return path


def outcomes_by_subject(report: MineReport) -> list[tuple[str, str]]:
    return [(o.subject, o.outcome) for o in report.outcomes]


# -- linked issues ------------------------------------------------------------------------------------
def test_commit_messages_link_issues_with_githubs_keywords():
    message = ("Fix #387, fixes #12 and closes gh-5\n\nResolves: owner/repo#9. Fixed "
               "https://github.com/other/lib/issues/3\nsee #100, Fix div (#200), prefix#7, fixes #12 again")
    assert linked_issues(message, "owner/repo") == [IssueRef(387), IssueRef(12), IssueRef(5), IssueRef(9),
                                                    IssueRef(3, "other/lib")]
    assert linked_issues("Resolves: owner/repo#9")[0].key() == "owner/repo#9"  # our name unknown: kept whole
    assert linked_issues("Mention #4 without a keyword; unfixes #5") == []


def test_issue_texts_load_by_number_and_by_commit(tmp_path):
    lines = tmp_path / "issues.jsonl"
    lines.write_text(json.dumps(ISSUE_12) + "\n\n" + json.dumps({"number": 3, "repo": "other/lib", "text": "T3"})
                     + "\n" + json.dumps({"commit": "abc1234", "text": "by commit"}) + "\n")
    texts = load_issue_texts(lines)
    assert texts.by_issue == {"#12": "mean([]) raises ZeroDivisionError\n\nIt should return 0.0.", "other/lib#3": "T3"}
    assert texts.for_commit("abc1234ffff") == "by commit" and texts.for_commit("fff") is None

    keyed = tmp_path / "issues.json"
    keyed.write_text(json.dumps({"#387": {"title": "Crash", "body": None}, "42": "Forty-two",
                                 "deadbeef": "a commit's issue", "1234567": "seven digits: a commit id"}))
    texts = load_issue_texts(keyed)
    assert texts.by_issue == {"#387": "Crash", "#42": "Forty-two"}
    assert texts.by_commit == {"deadbeef": "a commit's issue", "1234567": "seven digits: a commit id"}

    listed = tmp_path / "gh.json"  # `gh issue list --json number,title,body`
    listed.write_text(json.dumps([{"number": 1, "title": "One", "body": "first"}, {"number": 2, "title": "Two"}]))
    assert load_issue_texts(listed).by_issue == {"#1": "One\n\nfirst", "#2": "Two"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ISSUE_12) + "\n" + json.dumps({"title": "no number"}) + "\n")
    with pytest.raises(ForagerError, match=r"bad.jsonl:2: expected"):
        load_issue_texts(bad)


def test_issue_texts_are_fetched_from_an_url_template(issue_server):
    fetcher = IssueFetcher(issue_server.url + "/repos/{owner}/{name}/issues/{number}", "example/tallykit", timeout=5)
    before = len(issue_server.requests)
    assert fetcher.fetch(IssueRef(5)) == ("clamp ignores hi\n\nclamp(50, 0, 10) gives 50.", None)
    assert fetcher.fetch(IssueRef(5))[0].startswith("clamp ignores hi")  # cached: asked once
    assert fetcher.fetch(IssueRef(9)) == (ISSUE_9_TEXT, None)
    assert fetcher.fetch(IssueRef(3, "other/lib"))[0] is None
    assert issue_server.requests[before:] == ["/repos/example/tallykit/issues/5", "/repos/example/tallykit/issues/9",
                                              "/repos/other/lib/issues/3"]
    text, why = fetcher.fetch(IssueRef(404))
    assert text is None
    assert why == f"issue #404: {issue_server.url}/repos/example/tallykit/issues/404 answered HTTP 404 Not Found"

    slow = IssueFetcher(issue_server.url + "/slow/issues/{number}", "example/tallykit", timeout=0.3)
    started = time.monotonic()
    text, why = slow.fetch(IssueRef(5))
    assert text is None and time.monotonic() - started < 1.2
    assert why.startswith(f"issue #5: could not fetch {issue_server.url}/slow/issues/5 within 0.3s (") and \
        why.endswith("check --issue-url")
    # A template without a repository fetches only this repository's issues.
    assert IssueFetcher(issue_server.url + "/issues/{number}", "example/tallykit").url(IssueRef(3, "other/lib")) is None
    for template, error in [("https://example.com/issues", "must hold {number}"),
                            ("https://example.com/{number}/{token}", "may hold only"),
                            ("file:///etc/{number}", "only http:// and https://")]:
        with pytest.raises(ForagerError, match=error):
            IssueFetcher(template, None)


def test_the_statement_is_the_issue_text_else_the_commit_message(issue_server):
    texts = IssueTexts(by_commit={"c0ffee": "the commit's own issue"}, by_issue={"#12": "Issue twelve"})
    from_file = StatementSource(texts, None, "example/tallykit")
    statement = from_file.statement("c0ffee00", "Fix #12")
    assert (statement.text, statement.source, statement.issues) == ("the commit's own issue", "issue", ["#12"])
    statement = from_file.statement("aaaa", "Fix the thing\n\nFixes #12, closes #13")
    assert (statement.text, statement.source, statement.issues) == ("Issue twelve", "issue", ["#12", "#13"])
    statement = from_file.statement("aaaa", "Fix the thing\n\ncloses #13\n")
    assert (statement.text, statement.source) == ("Fix the thing\n\ncloses #13", "commit_message")
    assert statement.notes == ["#13: not in the issues file"]
    statement = StatementSource().statement("aaaa", "Refactor")
    assert (statement.text, statement.source, statement.issues, statement.notes) == \
        ("Refactor", "commit_message", [], [])
    both = StatementSource(texts, IssueFetcher(issue_server.url + "/issues/{number}", "example/tallykit"))
    statement = both.statement("aaaa", "Fixes #12 and fixes #9")
    assert statement.text == f"Issue twelve\n\n{ISSUE_9_TEXT}" and statement.source == "issue"


# -- on this machine ----------------------------------------------------------------------------------
def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "forager", "tasks", "mine", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_on_this_machine_a_src_layout_is_rejected_and_the_report_says_why(tallykit, tmp_path):
    assert importlib.util.find_spec("tallykit") is None  # this machine lacks the package
    out = tmp_path / "mined.jsonl"
    done = cli(str(tallykit.path), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    hint = "(the package is under src/: run in the project's image: --image, or set PYTHONPATH=src)"
    why = f"no tasks from 8 commits: 5 tests_do_not_collect (ModuleNotFoundError: No module named 'tallykit' {hint})"
    assert why in done.stdout, done.stdout
    assert out.read_text() == ""
    rows = [json.loads(line) for line in (tmp_path / "mined.report.jsonl").read_text().splitlines()]
    assert [(r["subject"], r["outcome"]) for r in rows] == [
        (s, "tests_do_not_collect" if o in ("task", "no_fail_to_pass") else o) for s, o in SUBJECT_OUTCOMES]
    assert rows[0]["commit"] == tallykit.shas[-1] and all(r["duration_s"] >= 0 for r in rows)
    assert {r["detail"] for r in rows if r["outcome"] == "tests_do_not_collect"} == {
        f"ModuleNotFoundError: No module named 'tallykit' {hint}"}


def test_with_the_package_importable_the_fixes_become_tasks_with_their_issues(tallykit, issue_server, issues_file):
    """What the hint says works: PYTHONPATH=src in the test command; issue #12 from the file, #5 and #9 fetched."""
    events = []
    report = mine_repository(tallykit.path, MineConfig(
        test_command="PYTHONPATH=src python -m pytest -rA -p no:cacheprovider", issues=load_issue_texts(issues_file),
        issue_url=issue_server.url + "/repos/{owner}/{name}/issues/{number}"), on_event=events.append)
    assert outcomes_by_subject(report) == SUBJECT_OUTCOMES and events == report.outcomes
    modes = report.outcomes[0]
    assert modes.detail == "ModuleNotFoundError: No module named 'tallykit.modes'"  # a real failure: no hint
    assert report.outcomes[2].detail == "5 tests, 5 pass with the fix and all of those without it"
    median, clamp, mean = report.tasks
    assert median.problem_statement == ISSUE_9_TEXT and median.metadata["issues"] == ["#9"]
    assert clamp.problem_statement == "clamp ignores hi\n\nclamp(50, 0, 10) gives 50."
    assert mean.problem_statement == "mean([]) raises ZeroDivisionError\n\nIt should return 0.0."
    assert {t.metadata["statement_source"] for t in report.tasks} == {"issue"} and report.from_commit_messages == 0
    assert clamp.FAIL_TO_PASS == ["tests/test_stats.py::test_clamp_high"]
    assert median.FAIL_TO_PASS == ["tests/test_median.py::test_odd", "tests/test_median.py::test_even"]
    assert mean.local_repo == str(tallykit.path.resolve()) and mean.image is None
    assert report.outcomes[1].detail == "2 FAIL_TO_PASS, 0 PASS_TO_PASS; statement from #9"


# -- in the project's image -------------------------------------------------------------------------------
def _have_base() -> bool:
    if not docker_available():
        return False
    from forager.runtime.docker import docker_client

    client = docker_client()
    try:
        client.images.get("forager/base:latest")
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        client.close()


needs_base = pytest.mark.skipif(not _have_base(), reason="needs Docker with forager/base:latest "
                                                         "(`forager images bootstrap`)")


@pytest.fixture(scope="module")
def image(tallykit) -> str:
    """The project's image, built from the repository on this machine: /repo with its history, installed.

    Its tag hashes the commit and the environment, so a later run finds it built (the history's dates are fixed)."""
    from forager.images.build import BuildOptions, build_image

    result = build_image(str(tallykit.path), BuildOptions())
    assert result.ok, result.error
    return result.tag or ""


@needs_base
@pytest.mark.timeout(1500)  # the first run builds the image
def test_in_the_image_the_history_becomes_valid_tasks(tallykit, image, issue_server, issues_file):
    import functools

    from forager.runtime.registry import open_runtime
    from forager.tasks.validate import check_tasks

    assert importlib.util.find_spec("tallykit") is None
    report = mine_repository(tallykit.path, MineConfig(
        image=image, issues=load_issue_texts(issues_file),
        issue_url=issue_server.url + "/repos/{owner}/{name}/issues/{number}"))
    assert outcomes_by_subject(report) == SUBJECT_OUTCOMES
    assert report.runtime == f"docker {image}" and report.test_command.startswith("python -m pytest -rA")
    assert report.outcomes[0].detail == "ModuleNotFoundError: No module named 'tallykit.modes'"
    assert [t.instance_id for t in report.tasks] == [f"example__tallykit__{tallykit.shas[n][:10]}" for n in (6, 4, 1)]
    for task in report.tasks:
        assert task.image == image and task.local_repo is None and task.workdir == "/repo"
        assert task.metadata["statement_source"] == "issue"
    checks = check_tasks(report.tasks, functools.partial(open_runtime, kind="docker"), workers=2)
    assert [c.problem for c in checks] == [None, None, None]


@needs_base
@pytest.mark.timeout(1500)
def test_the_cli_mines_the_images_own_history_with_its_test_command(image, tmp_path):
    out, report = tmp_path / "tasks.jsonl", tmp_path / "outcomes.jsonl"
    done = cli("--image", image, "--out", str(out), "--report", str(report),
               "--test-command", "python -m pytest -rA -p no:cacheprovider -k 'not test_even'")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote 3 tasks to {out} from 8 commits (5 ran their tests in docker {image})" in done.stdout
    assert "statements: 0 from linked issues, 3 the commit message" in done.stdout
    assert "issue text not used: #9: no issues file (--issues) or URL template (--issue-url) gives its text" \
        in done.stdout
    for reason in ("tests_do_not_collect", "no_fail_to_pass", "no_source_changed", "no_tests_changed", "root_commit"):
        assert reason in done.stdout
    tasks = [json.loads(line) for line in out.read_text().splitlines()]
    median = tasks[0]
    assert median["repo"] == "tallykit" and median["instance_id"].startswith("tallykit__")
    assert median["FAIL_TO_PASS"] == ["tests/test_median.py::test_odd"]  # --test-command deselected the other
    assert median["test_command"].endswith("-k 'not test_even'") and median["image"] == image
    assert median["problem_statement"] == "Add median\n\nResolves: example/tallykit#9"
    assert median["metadata"]["statement_source"] == "commit_message"
    assert len(report.read_text().splitlines()) == 8


@needs_base
@pytest.mark.timeout(1500)
def test_a_container_lost_mid_walk_costs_one_commit_not_the_run(tallykit, image):
    """Removed from outside after the first commit whose tests ran: that one commit's outcome says so."""
    from forager.runtime.docker import docker_client

    client = docker_client()

    def remove_my_containers(outcome) -> None:
        if outcome.subject == "Start on modes":
            mine = client.containers.list(filters={"label": [f"forager.image={image}",
                                                              f"forager.owner.pid={os.getpid()}"]})
            assert len(mine) == 1
            mine[0].remove(force=True)

    try:
        report = mine_repository(tallykit.path, MineConfig(image=image, max_commits=4), on_event=remove_my_containers)
    finally:
        client.close()
    assert [o.outcome for o in report.outcomes] == ["tests_do_not_collect", "mining_error", "no_fail_to_pass",
                                                    "task"]
    assert report.outcomes[1].detail.startswith("ContainerGone: ")
