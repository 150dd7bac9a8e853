"""Mutate-fix generation end to end on the sample image, and the task CLI around it."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from forager.core import Task
from forager.tasks.store import load_tasks
from forager.runtime.registry import open_runtime
from forager.runtime import DockerRuntime
from forager.tasks.mutate import Mutation, enumerate_mutations
from forager.tasks.mutate_fix import MutateConfig, generate_mutate_fix_tasks
from forager.tasks.statements import (
    MutationContext,
    collection_error_for,
    collection_errors,
    default_problem_statement,
    error_excerpt,
    redact,
)
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
    mutation = Mutation("replace_binop", "bump", 3, 3, "replace `+` with `-`", "x = 1\n", (0, 6, "x = 2\n"))
    text = default_problem_statement(MutationContext(
        "acme/lib", ["tests/test_bump.py::test_x", "tests/test_bump.py::test_y"],
        {"tests/test_bump.py::test_x": report}, mutation, "lib/bump.py"))
    assert "2 tests of acme/lib started failing" in text and "`tests/test_bump.py::test_y`" in text
    assert "AssertionError: assert '1.1.0' == '2.0.0'" in text
    assert "assert bump" not in text and "replace" not in text


DOCTEST_FAILURE = """\
015 The share of each item.
016
017     >>> per_item(10, 4)
UNEXPECTED EXCEPTION: ZeroDivisionError('division by zero')
Traceback (most recent call last):
  File "/usr/lib/python3.11/doctest.py", line 1351, in __run
    exec(compile(example.source, filename, "single",
  File "<doctest tinycalc.per_item[0]>", line 1, in <module>
  File "/repo/tinycalc/__init__.py", line 19, in per_item
    return total / (count * 0)
           ~~~~~~^^^^^^^^^^^^^
ZeroDivisionError: division by zero
/repo/tinycalc/__init__.py:17: UnexpectedException"""


def test_a_traceback_in_a_statement_never_shows_the_mutated_line():
    original = "def per_item(total, count):\n    return total / (count * 1)\n"
    (mutation,) = enumerate_mutations("\n" * 17 + original, ["change_constant"])
    assert mutation.mutated_lines == {19: "    return total / (count * 0)"}
    ctx = MutationContext("tinycalc", ["tinycalc/__init__.py::tinycalc.per_item"],
                          {"tinycalc/__init__.py::tinycalc.per_item": DOCTEST_FAILURE}, mutation, "tinycalc/__init__.py")
    statement = default_problem_statement(ctx)
    assert "ZeroDivisionError: division by zero" in statement and 'line 19, in per_item' in statement
    assert "count * 0" not in statement and "~~~" not in statement
    # by content too, wherever a line shows it (pytest's `>` lines, another frame's path)
    shown = redact(">       return total / (count * 0)\nE   ZeroDivisionError", mutation, "other.py")
    assert shown == "E   ZeroDivisionError"


def test_a_plain_traceback_shows_the_test_and_the_error_not_pytest_itself():
    report = (
        'Traceback (most recent call last):\n'
        '  File "/repo/tests/test_time.py", line 703, in test_bogus_call\n    with pytest.raises(ValueError):\n'
        '  File "/opt/venv/lib/python3.13/site-packages/_pytest/raises.py", line 699, in __exit__\n'
        '    fail(f"DID NOT RAISE {self.expected_exceptions[0].__name__}")\n'
        'Failed: DID NOT RAISE ValueError'
    )
    assert error_excerpt(report).splitlines() == [
        "Traceback (most recent call last):", '  File "/repo/tests/test_time.py", line 703, in test_bogus_call',
        "    with pytest.raises(ValueError):", "  ...", "Failed: DID NOT RAISE ValueError"]


def test_collection_errors_are_read_from_pytest_output():
    log = (
        "==================================== ERRORS ====================================\n"
        "_____________________ ERROR collecting tests/test_calc.py ______________________\n"
        "tests/test_calc.py:1: in <module>\n    from tinycalc import circle\ntinycalc/__init__.py:5: in <module>\n"
        "    TAU = math.pi * 2\nE   NameError: name 'math' is not defined\n"
        "=========================== short test summary info ============================\n"
        "ERROR tests/test_calc.py - NameError: name 'math' is not defined\n"
    )
    errors = collection_errors(log)
    assert list(errors) == ["tests/test_calc.py"] and errors["tests/test_calc.py"].endswith("is not defined")
    assert collection_error_for("tests/test_calc.py::test_circle", errors) == errors["tests/test_calc.py"]
    assert collection_error_for("tests/test_other.py::test_x", errors) == errors["tests/test_calc.py"]  # pytest stopped


def test_why_no_target_says_what_coverage_saw():
    from forager.harness import CoverageMap
    from forager.tasks.mutate_targets import why_no_target

    assert "saw no line" in why_no_target(["pkg/a.py"], CoverageMap([], {}), 3)
    installed = CoverageMap(["t"], {"/usr/lib/python3/site-packages/pkg/a.py": {1: [0]}})
    assert "installed copy" in why_no_target(["pkg/a.py"], installed, 3)
    only_module_level = CoverageMap(["t"], {"pkg/a.py": {1: [0]}})
    assert "no function of pkg/a.py" in why_no_target(["pkg/a.py"], only_module_level, 3)


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


# -- a real project that enables pytest-cov in its pytest settings -----------------------------------------
TINYCALC = {
    "pyproject.toml": (
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "tinycalc"\nversion = "1.0.0"\nrequires-python = ">=3.9"\n\n'
        '[project.optional-dependencies]\ntest = ["pytest", "pytest-cov", "pytest-xdist"]\n\n'
        '[tool.setuptools]\npackages = ["tinycalc"]\n\n'
        '[tool.pytest.ini_options]\naddopts = "--cov=tinycalc --cov-report=term --doctest-modules"\n'
        'testpaths = ["tests", "tinycalc"]\n'
    ),
    "tinycalc/__init__.py": (
        '"""A calculator small enough to know every mutation of."""\n\nimport math\n\nTAU = math.pi * 2\n\n\n'
        "def double_sum(x, y):\n    return x * 2 + y * 2\n\n\n"
        'def per_item(total, count):\n    """The share of each item.\n\n    >>> per_item(10, 4)\n    2.5\n    """\n'
        "    return total / (count * 1)\n\n\n"
        "def circle(r):\n    return math.pi * r * r\n"
    ),
    "tests/test_calc.py": (
        "from tinycalc import circle, double_sum\n\n\ndef test_double_sum():\n    assert double_sum(1, 2) == 6\n\n\n"
        "def test_circle():\n    assert round(circle(1), 2) == 3.14\n"
    ),
}


@pytest.fixture(scope="module")
def tinycalc_image(tmp_path_factory):
    """The project as a one-commit repository with fixed dates: the same image tag on every run (cached)."""
    from forager.images.build import BuildOptions, build_image

    root = tmp_path_factory.mktemp("projects") / "tinycalc"
    for name, text in TINYCALC.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    date = "2024-01-01T00:00:00+00:00"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "PATH": "/usr/bin:/bin:/usr/local/bin"}
    subprocess.run("git init -q -b main && git add -A && git commit -qm tinycalc", shell=True, cwd=root, check=True,
                   env=env)
    result = build_image(str(root), BuildOptions(python="3.11"))
    assert result.ok, result.error
    return result.tag


def _table_row(output: str, operator: str) -> list[str]:
    row = next(line for line in output.splitlines() if f" {operator} " in line)
    return [cell.strip() for cell in row.split("│")[1:-1]]


@needs_docker
def test_mutate_works_with_pytest_cov_enabled_and_tells_what_users_see(tinycalc_image, tmp_path):
    out = tmp_path / "tasks.jsonl"
    made = _cli("tasks", "mutate", "--image", tinycalc_image, "--out", str(out), "--max", "20",
                "--operators", "change_constant,remove_import", "--max-per-function", "10")
    assert made.returncode == 0, made.stdout + made.stderr
    tasks = {t.metadata["function"]: t for t in load_tasks(out)}
    # Forager's coverage saw the project although `addopts` turns pytest-cov on
    assert set(tasks) == {"double_sum", "per_item", "<module>"}, made.stdout
    assert all(t.repo == "tinycalc" and " of tinycalc started failing:" in t.problem_statement
               for t in tasks.values())
    # `x * 2 + y * 2`: the second `2` -> `3` fails the same test on the same line: one task, one near-duplicate
    assert _table_row(made.stdout, "change_constant") == ["change_constant", "3", "2", "67%", "0", "0", "1", "0"]
    # the module no longer imports: the statement carries the collection error
    broken = tasks["<module>"]
    assert broken.metadata["import_error"] and "NameError: name 'math' is not defined" in broken.metadata["collection_error"]
    assert "NameError: name 'math' is not defined" in broken.problem_statement
    # a doctest's traceback names the line, and never shows it
    doctest = tasks["per_item"]
    assert doctest.FAIL_TO_PASS == ["tinycalc/__init__.py::tinycalc.per_item"]
    assert "ZeroDivisionError" in doctest.problem_statement and "count * 0" not in doctest.problem_statement
    checked = _cli("tasks", "validate", "--tasks", str(out), "--runtime", "docker")
    assert checked.returncode == 0 and f"{len(tasks)}/{len(tasks)} tasks valid" in checked.stdout, checked.stdout


@needs_docker
def test_coverage_and_validation_stay_in_process_under_xdist(tinycalc_image):
    """`-n 2` (in addopts, or from pytest-enabler) would send the tests to workers Forager's coverage
    and fork server never see: both keep them in their own process."""
    from forager.harness import PytestHarness

    with DockerRuntime(tinycalc_image, "/repo") as runtime:
        harness = PytestHarness(runtime, "python -m pytest -rA -p no:cacheprovider -n 2")
        run, coverage = harness.coverage(timeout=300)
        assert run.passed("tests/test_calc.py::test_circle") and "tinycalc/__init__.py" in coverage.files
        assert coverage.tests_for("tinycalc/__init__.py", 18, 18) == {"tinycalc/__init__.py::tinycalc.per_item"}
        harness.serve()
        served = harness.run(["tests/test_calc.py::test_double_sum"], 60)
        assert served.passed("tests/test_calc.py::test_double_sum") and "gw0" not in served.log


@needs_docker
def test_the_fork_server_never_runs_stale_bytecode():
    """Two versions of a module of the same size written within one second: each run sees its own."""
    from forager.harness import PytestHarness

    with DockerRuntime(SAMPLE_IMAGE, "/repo") as runtime:
        runtime.write_file("tests/test_probe.py", "from semverkit._probe import VALUE\n\n\ndef test_value():\n"
                                                  "    assert VALUE == 1\n")
        harness = PytestHarness(runtime)
        harness.serve(bytecode_cache=True)
        outcomes = []
        for value in (1, 2, 1, 2):
            runtime.write_file("semverkit/_probe.py", f"VALUE = {value}\n")
            run = harness.run(["tests/test_probe.py::test_value"], 60, changed=["semverkit/_probe.py"])
            outcomes.append(run.status("tests/test_probe.py::test_value"))
        assert outcomes == ["PASSED", "FAILED", "PASSED", "FAILED"]
        assert runtime.run(f"find {harness.tools_dir()}/pycache -name '_probe*.pyc' | grep -q .", 30).ok  # it did cache
        assert harness.last_cpu_s and harness.last_cpu_s > 0


@needs_docker
def test_the_grader_keeps_pytest_cov_and_xdist_out_of_the_grade(tinycalc_image):
    """A project whose settings turn on pytest-cov with a threshold and xdist: a fix whose tests pass
    resolves (a coverage threshold is not a test), and the guard sees every test in its own process."""
    from forager.rewards import grade_patch

    with DockerRuntime(tinycalc_image, "/repo") as runtime:
        base = runtime.run_checked("git rev-parse HEAD").strip()
    bug = ("diff --git a/tinycalc/__init__.py b/tinycalc/__init__.py\n--- a/tinycalc/__init__.py\n"
           "+++ b/tinycalc/__init__.py\n@@ -8,3 +8,3 @@\n def double_sum(x, y):\n-    return x * 2 + y * 2\n"
           "+    return x * 2 + y * 3\n \n")
    fix = bug.replace("-    return x * 2 + y * 2\n+    return x * 2 + y * 3\n",
                      "-    return x * 2 + y * 3\n+    return x * 2 + y * 2\n")
    task = Task(instance_id="tinycalc-cov", image=tinycalc_image, base_commit=base, setup_patch=bug, patch=fix,
                problem_statement="double_sum is wrong", FAIL_TO_PASS=["tests/test_calc.py::test_double_sum"],
                PASS_TO_PASS=["tests/test_calc.py::test_circle"],
                test_command="python -m pytest -rA -p no:cacheprovider -n 2 --cov-fail-under=100")
    resolved = grade_patch(task, fix, open_runtime)
    assert resolved.resolved, resolved
    unresolved = grade_patch(task, "", open_runtime)
    assert not unresolved.resolved
