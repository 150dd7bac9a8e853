"""Mutate-fix generation end to end on the sample image, and the task CLI around it."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from forager.tasks.store import load_tasks
from forager.runtime.registry import open_runtime
from forager.runtime import DockerRuntime
from forager.tasks.mutate import Mutation
from forager.tasks.mutate_fix import MutateConfig, generate_mutate_fix_tasks
from forager.tasks.statements import MutationContext, default_problem_statement, error_excerpt
from forager.tasks.validate import check_tasks

from conftest import SAMPLE_IMAGE, needs_docker


@pytest.fixture(scope="module")
def generated():
    return generate_mutate_fix_tasks(
        functools.partial(DockerRuntime, SAMPLE_IMAGE, "/repo"), image=SAMPLE_IMAGE, repo="forager/semverkit",
        config=MutateConfig(max_tasks=8, seed=3, extra_pass_to_pass=2),
    )


@needs_docker
def test_generated_tasks_are_valid_and_diverse(generated):
    tasks = generated.tasks
    assert len(tasks) == 8
    assert generated.tests_passing == generated.tests_total == 197
    assert len({t.metadata["operator"] for t in tasks}) >= 6, "candidates are interleaved across operators"
    assert len({t.instance_id for t in tasks}) == len(tasks)
    for task in tasks:
        assert task.kind == "mutate-fix" and task.image == SAMPLE_IMAGE and task.FAIL_TO_PASS
        assert not set(task.FAIL_TO_PASS) & set(task.PASS_TO_PASS)
        # a small, realistic diff: one file, the changed span only
        changed = [line for line in task.setup_patch.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        assert task.setup_patch.count("diff --git") == 1 and 1 <= len(changed) <= 40, task.setup_patch
        assert task.metadata["file"] in task.setup_patch
        # the statement says what a user sees, never what was changed
        statement = task.problem_statement
        assert task.FAIL_TO_PASS[0] in statement
        assert task.metadata["description"] not in statement and task.metadata["operator"] not in statement
        assert not any(line[1:].strip() and line[1:].strip() in statement for line in changed if len(line) > 12)
    stats = generated.stats
    assert sum(s.valid for s in stats.values()) == 8
    assert sum(s.tried for s in stats.values()) >= 8


@needs_docker
def test_reference_fix_resolves_and_empty_patch_does_not(generated):
    checks = check_tasks(generated.tasks[:4], functools.partial(open_runtime, kind="docker"), workers=2)
    assert [c.problem for c in checks] == [None] * 4


@needs_docker
def test_extra_pass_to_pass_are_tests_outside_the_function(generated):
    task = generated.tasks[0]
    assert len(task.PASS_TO_PASS) >= 2


@needs_docker
def test_unknown_operator_is_a_clear_error():
    from forager.core import ForagerError

    with pytest.raises(ForagerError, match="unknown operators.*choose from"):
        generate_mutate_fix_tasks(lambda: None, image=None, repo="x", config=MutateConfig(operators=("flip_bits",)))


def test_problem_statement_lists_failures_and_the_first_error():
    report = (
        "def test_x():\n>       assert bump('1.0.0') == '2.0.0'\nE       AssertionError: assert '1.1.0' == '2.0.0'\n"
        "E         - 2.0.0\n\ntests/test_bump.py:12: AssertionError"
    )
    excerpt = error_excerpt(report)
    assert excerpt.splitlines() == [
        "E       AssertionError: assert '1.1.0' == '2.0.0'", "E         - 2.0.0", "tests/test_bump.py:12: AssertionError"]
    mutation = Mutation("replace_binop", "bump", 3, 3, "replace `+` with `-`", "x = 1\n")
    text = default_problem_statement(MutationContext(
        "acme/lib", ["tests/test_bump.py::test_x", "tests/test_bump.py::test_y"],
        {"tests/test_bump.py::test_x": report}, mutation, "lib/bump.py"))
    assert "2 tests of acme/lib started failing" in text and "`tests/test_bump.py::test_y`" in text
    assert "AssertionError: assert '1.1.0' == '2.0.0'" in text
    assert "assert bump" not in text and "replace" not in text


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forager", *args], capture_output=True, text=True, input=stdin,
                          timeout=600)


@needs_docker
def test_cli_mutate_validate_grade(tmp_path):
    out = tmp_path / "tasks.jsonl"
    made = _cli("tasks", "mutate", "--image", SAMPLE_IMAGE, "--max", "3", "--out", str(out), "--seed", "5")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "wrote 3 tasks" in made.stdout and "replace_compare" in made.stdout  # the per-operator summary
    tasks = load_tasks(out)
    assert len(tasks) == 3

    checked = _cli("tasks", "validate", "--tasks", str(out), "--json", "--runtime", "docker")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rows = [json.loads(line) for line in checked.stdout.splitlines() if line.startswith("{")]
    assert [r["ok"] for r in rows] == [True] * 3

    task = tasks[0]
    graded = _cli("grade", "--tasks", str(out), "--instance-id", task.instance_id, "--patch", "-", "--json",
                  stdin=task.patch)
    result = json.loads(graded.stdout)
    assert result["resolved"] and result["resolution"] == "FULL" and result["reward"] == 1.0
    empty = _cli("grade", "--tasks", str(out), "--instance-id", task.instance_id, "--patch", "-", "--json",
                 "--reward-unresolved", "-1", stdin="")
    assert json.loads(empty.stdout)["reward"] == -1.0

    # a broken task is reported and the command fails
    broken = task.model_copy(update={"instance_id": "broken", "patch": task.setup_patch})
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text(broken.model_dump_json() + "\n")
    bad = _cli("tasks", "validate", "--tasks", str(bad_file))
    assert bad.returncode == 1 and "reference fix does not resolve" in bad.stdout


def test_cli_errors_are_readable(tmp_path):
    missing = _cli("grade", "--tasks", str(tmp_path / "nope.jsonl"), "--instance-id", "x", "--patch", "-")
    assert missing.returncode == 1 and "error" in missing.stdout and "Traceback" not in missing.stdout + missing.stderr


def test_cli_import_swebench_file(tmp_path):
    record = {
        "repo": "acme/lib", "instance_id": "acme__lib-1", "base_commit": "abc123", "patch": "", "test_patch": "",
        "problem_statement": "It breaks.", "hints_text": "", "created_at": "2024-01-01", "version": "1.0",
        "FAIL_TO_PASS": json.dumps(["tests/test_a.py::test_x"]), "PASS_TO_PASS": "[]", "environment_setup_commit": "abc",
    }
    source = tmp_path / "instances.jsonl"
    source.write_text(json.dumps(record) + "\n")
    out = tmp_path / "tasks.jsonl"
    done = _cli("tasks", "import", str(source), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    (task,) = load_tasks(out)
    assert task.kind == "issue-fix" and task.FAIL_TO_PASS == ["tests/test_a.py::test_x"] and task.workdir == "/testbed"
