"""Issue-fix mining on a real git history, graded for real, and a starting state that hides the fix.

The history is a shell script with fixed dates, so the same commits (same ids) come out on the host
and inside a container from the sample image.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from forager.rewards import grade_patch
from forager.runtime import DockerRuntime, LocalRuntime
from forager.runtime.base import ShellRuntime, bash_quote
from forager.tasks.checkout import checkout_task
from forager.tasks.issue_fix import (
    MineConfig,
    MineReport,
    load_issue_texts,
    mine_repository,
    repository_name,
    split_commit_diff,
)

from conftest import SAMPLE_IMAGE, needs_docker

CALC = "def add(a, b):\n    return a + b\n\n\ndef div(a, b):\n    return a // b\n"
TESTS = "from calc import add, div\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
FIX_MESSAGE = "Fix div truncating its result\n\ndiv(1, 2) returned 0 instead of 0.5."

# (files, message): commit 2 is the only real issue fix.
HISTORY: list[tuple[dict[str, str], str]] = [
    ({"calc.py": CALC, "tests/test_calc.py": TESTS, "README.md": "# calc\n"}, "Add calc"),
    ({"calc.py": CALC.replace("a // b", "a / b"),
      "tests/test_calc.py": TESTS + "\n\ndef test_div():\n    assert div(1, 2) == 0.5\n"}, FIX_MESSAGE),
    ({"README.md": "# calc\n\nAdds and divides.\n"}, "Document calc"),
    ({"tests/test_calc.py": TESTS + "\n\ndef test_div():\n    assert div(1, 2) == 0.5\n\n\n"
      "def test_add_negative():\n    assert add(-1, -2) == -3\n"}, "Test negative numbers"),
    ({"calc.py": '"""Arithmetic."""\n\n' + CALC.replace("a // b", "a / b"),
      "tests/test_calc.py": TESTS + "\n\ndef test_div():\n    assert div(1, 2) == 0.5\n\n\n"
      "def test_add_negative():\n    assert add(-1, -2) == -3\n\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n"},
     "Docstring, and a test that already passed"),
]
GIT_ENV = ("GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=dev GIT_AUTHOR_EMAIL=dev@example.com "
           "GIT_COMMITTER_NAME=dev GIT_COMMITTER_EMAIL=dev@example.com")


def history_script(history: list[tuple[dict[str, str], str]]) -> str:
    """Bash that builds `history` in the current directory, plus a tag, a branch and an `origin` remote."""
    lines = [f"export {GIT_ENV}", "git init -q -b main"]
    for n, (files, message) in enumerate(history):
        for path, text in files.items():
            lines.append(f"mkdir -p \"$(dirname {bash_quote(path)})\" && "
                         f"printf '%s' {bash_quote(text)} > {bash_quote(path)}")
        date = f"2024-01-0{n + 1}T12:00:00Z"
        lines.append(f"git add -A && GIT_AUTHOR_DATE={date} GIT_COMMITTER_DATE={date} "
                     f"git commit -q -m {bash_quote(message)}")
    lines += ["git tag v1.0", "git branch feature", "git remote add origin https://github.com/example/calc.git"]
    return "\n".join(lines) + "\n"


# What a repository's git directory may also hold: a remote and its refs, a stash, a note, branch
# settings, ORIG_HEAD, FETCH_HEAD, reflogs, a leftover commit message.
EXTRA_TRACES = (
    f"export {GIT_ENV} && git remote add upstream https://github.com/example/calc-upstream.git && "
    "git update-ref refs/remotes/upstream/main HEAD && git config branch.feature.description 'the div fix' && "
    "printf 'wip\\n' >> calc.py && git stash -q && git notes add -m reviewed HEAD && "
    "git reset -q --hard HEAD && git fetch -q . main && git -c advice.detachedHead=false checkout -q HEAD~1"
)


@dataclass
class History:
    path: Path
    shas: list[str]
    """Oldest first."""

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True, check=True).stdout


def build_history(path: Path, history: list[tuple[dict[str, str], str]]) -> History:
    path.mkdir(parents=True)
    subprocess.run(["bash", "-ec", history_script(history)], cwd=path, check=True)
    repo = History(path, [])
    repo.shas = repo.git("rev-list", "--reverse", "HEAD").split()
    return repo


@pytest.fixture(scope="module")
def calc(tmp_path_factory) -> History:
    return build_history(tmp_path_factory.mktemp("mine") / "calc", HISTORY)


@pytest.fixture(scope="module")
def mined(calc) -> tuple[MineReport, list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    return mine_repository(calc.path, on_event=lambda o: events.append((o.commit, o.outcome))), events


# -- mining -----------------------------------------------------------------------------------------
def test_split_commit_diff_puts_test_files_in_the_test_patch():
    diff = "".join(
        f"diff --git a/{p} b/{p}\n--- a/{p}\n+++ b/{p}\n@@ -1 +1 @@\n-x\n+y\n"
        for p in ("pkg/core.py", "tests/test_core.py", "conftest.py", "pkg/tests/helpers.py", "test_top.py",
                  "docs/a.md")
    )
    patch, test_patch = split_commit_diff(diff, MineConfig().test_patterns)
    assert [line[13:].split()[0] for line in patch.splitlines() if line.startswith("diff --git")] == [
        "pkg/core.py", "docs/a.md"]
    assert [line[13:].split()[0] for line in test_patch.splitlines() if line.startswith("diff --git")] == [
        "tests/test_core.py", "conftest.py", "pkg/tests/helpers.py", "test_top.py"]
    assert sorted((patch + test_patch).splitlines(True)) == sorted(diff.splitlines(True))


def test_mining_finds_exactly_the_issue_fix_commit(calc, mined):
    report, events = mined
    fix, parent = calc.shas[1], calc.shas[0]
    assert [t.metadata["commit"] for t in report.tasks] == [fix]
    task = report.tasks[0]
    assert task.instance_id == f"example__calc__{fix[:10]}" and task.repo == "example/calc"
    assert task.kind == "issue-fix" and task.base_commit == parent
    assert task.FAIL_TO_PASS == ["tests/test_calc.py::test_div"]
    assert task.PASS_TO_PASS == ["tests/test_calc.py::test_add"]
    assert task.problem_statement == FIX_MESSAGE
    assert task.created_at == "2024-01-02T12:00:00Z"
    assert task.local_repo == str(calc.path.resolve()) and task.image is None
    assert task.metadata == {"commit": fix, "source": "git-history", "statement_source": "commit_message"}
    # The fix is the source half of the commit, the tests its other half, and nothing else.
    assert "diff --git a/calc.py b/calc.py" in task.patch and "tests/" not in task.patch
    assert "+    return a / b" in task.patch
    assert task.test_patch.startswith("diff --git a/tests/test_calc.py b/tests/test_calc.py")
    assert task.test_patch.count("diff --git") == 1 and "+def test_div():" in task.test_patch
    assert task.patch + task.test_patch == calc.git("diff", parent, fix)

    assert report.commits_seen == 5 and report.candidates == 2
    assert report.rejected == {"root_commit": 1, "no_tests_changed": 1, "no_source_changed": 1, "no_fail_to_pass": 1}
    assert events == [(calc.shas[4], "no_fail_to_pass"), (calc.shas[3], "no_source_changed"),
                      (calc.shas[2], "no_tests_changed"), (fix, "task"), (parent, "root_commit")]


def test_issue_texts_from_a_file_replace_commit_messages(calc, tmp_path):
    fix = calc.shas[1]
    as_object = tmp_path / "issues.json"
    as_object.write_text(json.dumps({fix[:8]: "div(1, 2) is 0: it should be 0.5", "0000000": "unrelated"}))
    as_lines = tmp_path / "issues.jsonl"
    as_lines.write_text(json.dumps({"commit": fix, "text": "Division truncates"}) + "\n\n")
    assert load_issue_texts(as_lines).by_commit == {fix: "Division truncates"}

    # The tests run here (local), the tasks name the image they will be graded in.
    report = mine_repository(calc.path, MineConfig(issues=load_issue_texts(as_object), max_commits=4,
                                                   image="calc:latest", workdir="/src", runtime="local"))
    [task] = report.tasks
    assert task.problem_statement == "div(1, 2) is 0: it should be 0.5"
    assert task.image == "calc:latest" and task.local_repo is None and task.workdir == "/src"
    assert report.commits_seen == 4 and "root_commit" not in report.rejected


def test_max_tasks_stops_the_walk(calc):
    report = mine_repository(calc.path, MineConfig(max_tasks=0))
    assert report.tasks == [] and report.commits_seen == 0


def test_an_interrupted_walk_keeps_the_tasks_found_so_far(calc):
    def stop_after_the_first_task(outcome):
        if outcome.outcome == "task":
            raise KeyboardInterrupt

    report = mine_repository(calc.path, on_event=stop_after_the_first_task)
    assert report.interrupted and len(report.tasks) == 1


def test_a_test_module_that_needs_the_fix_to_import_fails_before_it(tmp_path):
    repo = build_history(tmp_path / "mul", [
        ({"calc.py": CALC, "tests/test_calc.py": TESTS}, "Add calc"),
        ({"calc.py": CALC + "\n\ndef mul(a, b):\n    return a * b\n",
          "tests/test_mul.py": "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n\n\n"
          "def test_mul_zero():\n    assert mul(2, 0) == 0\n"}, "Add mul (closes #3)"),
    ])
    [task] = mine_repository(repo.path).tasks
    assert task.FAIL_TO_PASS == ["tests/test_mul.py::test_mul", "tests/test_mul.py::test_mul_zero"]
    assert task.PASS_TO_PASS == []
    assert repository_name(repo.path) == "example/calc"
    repo.git("remote", "remove", "origin")
    assert repository_name(repo.path) == "mul"


# -- grading --------------------------------------------------------------------------------------------
def test_the_reference_fix_resolves_and_nothing_does_not(mined):
    task = mined[0].tasks[0]
    fixed = grade_patch(task, task.patch, lambda t: LocalRuntime(t.local_repo), None)
    assert fixed.resolved and fixed.resolution == "FULL", fixed.log
    assert fixed.tests_status == {"tests/test_calc.py::test_div": "PASSED", "tests/test_calc.py::test_add": "PASSED"}
    nothing = grade_patch(task, "", lambda t: LocalRuntime(t.local_repo), None)
    assert not nothing.resolved and nothing.fail_to_pass["failure"] == ["tests/test_calc.py::test_div"]
    assert nothing.pass_to_pass["success"] == ["tests/test_calc.py::test_add"]


# -- no trace of the fix ----------------------------------------------------------------------------
def assert_no_trace_of_the_fix(rt: ShellRuntime, calc: History) -> None:
    parent, later = calc.shas[0], calc.shas[1:]
    fixed_blob = calc.git("rev-parse", f"{calc.shas[1]}:calc.py").strip()

    def out(command: str) -> str:
        return rt.run_checked(command).strip()

    assert out("git rev-parse HEAD") == parent
    assert out("git remote") == "" and out("git tag") == "" and out("git stash list") == ""
    assert out("git branch -a --format='%(refname)'") == "refs/heads/main"
    assert out("git for-each-ref --format='%(refname)'") == "refs/heads/main"
    assert out("git log --all --format=%H").split() == [parent]
    assert out("git reflog") in ("", f"{parent[:7]} HEAD@{{0}}")
    for sha in [*later, fixed_blob]:
        assert not rt.run(f"git cat-file -e {sha}").ok, f"{sha} is still in the repository"
    # Every object left is one the base commit reaches.
    stored = set(out("git cat-file --batch-all-objects --batch-check='%(objectname)'").split())
    reachable = {line.split()[0] for line in out("git rev-list --objects --all").splitlines()}
    assert stored == reachable
    assert not set(out("ls -a .git").split()) & {"ORIG_HEAD", "FETCH_HEAD", "COMMIT_EDITMSG", "logs"}
    assert "remote" not in out("cat .git/config") and "feature" not in out("cat .git/config")
    names = " ".join(f"-e {sha}" for sha in later)
    assert out(f"grep -rl {names} .git || true") == "", "a file in .git names a later commit"
    # The working tree is the parent's, exactly.
    assert out("git status --porcelain --ignored") == ""
    assert out("git rev-parse 'HEAD^{tree}'") == calc.git("rev-parse", f"{parent}^{{tree}}").strip()


def test_checkout_leaves_no_trace_of_the_fix(calc, mined):
    task = mined[0].tasks[0]
    with LocalRuntime(task.local_repo, command_timeout=60) as rt:
        rt.run_checked(EXTRA_TRACES)
        assert rt.run_checked("git log --all --format=%H").count("\n") > 3  # the traces are there
        assert checkout_task(rt, task) == calc.shas[0]
        assert_no_trace_of_the_fix(rt, calc)
        # The agent's diff against the returned commit is still what grading applies.
        rt.write_file("calc.py", CALC.replace("a // b", "a / b"))
        assert grade_patch(task, rt.diff(calc.shas[0]), lambda t: LocalRuntime(t.local_repo), None).resolved


@needs_docker
def test_checkout_leaves_no_trace_of_the_fix_in_a_container(calc, mined):
    task = mined[0].tasks[0].model_copy(update={"image": SAMPLE_IMAGE, "local_repo": None})
    with DockerRuntime(SAMPLE_IMAGE, "/repo", command_timeout=60) as rt:
        rt.run_checked("find . -mindepth 1 -delete && " + history_script(HISTORY))
        assert rt.run_checked("git rev-list --reverse HEAD").split() == calc.shas  # the same commits
        rt.run_checked(EXTRA_TRACES)
        assert checkout_task(rt, task) == calc.shas[0]
        assert_no_trace_of_the_fix(rt, calc)


def test_cli_mine_writes_the_tasks_and_says_what_it_rejected(calc, tmp_path):
    import subprocess
    import sys

    from forager.tasks.store import load_tasks

    out = tmp_path / "mined.jsonl"
    done = subprocess.run([sys.executable, "-m", "forager", "tasks", "mine", str(calc.path), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote 1 tasks" in done.stdout and "no_fail_to_pass" in done.stdout
    [task] = load_tasks(out)
    assert task.kind == "issue-fix" and task.base_commit == calc.shas[0]
    not_a_repo = subprocess.run([sys.executable, "-m", "forager", "tasks", "mine", str(tmp_path), "--out", str(out)],
                                capture_output=True, text=True, timeout=60)
    assert not_a_repo.returncode == 1 and "not a git repository" in not_a_repo.stdout
