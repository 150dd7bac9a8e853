"""Grading: the reference fix is rewarded; every known way to fake a pass is not.

Each attack is a real diff made in a scratch clone (the agent's side) and graded in a fresh
container from the sample image (the grader's side), exactly as SWEEnv does on submit.
"""

from __future__ import annotations

import functools
import textwrap

import pytest

from forager.runtime.registry import open_runtime
from forager.images.sample import sample_tasks
from forager.rewards import RewardConfig, grade_patch
from forager.harness import split_diff
from forager.rewards.grading import filter_diff, grade_statuses, parse_pytest_report
from forager.runtime import LocalRuntime
from forager.tasks.checkout import checkout_task

from conftest import needs_docker

TASK_ID = "semverkit__prerelease-numeric-order"


@functools.cache
def _task():
    """A sample task whose tests run with the repository on PYTHONPATH (as an editable install puts
    it), which makes interpreter hooks in the repository live: the strongest setting for the attacks."""
    task = next(t for t in sample_tasks() if t.instance_id == TASK_ID)
    return task.model_copy(update={"test_command": "PYTHONPATH=. " + task.test_command})


def _agent_diff(script: str, files: dict[str, str] | None = None) -> str:
    """What an agent's episode would submit: shell commands and file writes in the task's start state."""
    task = _task()
    with LocalRuntime(task.local_repo, command_timeout=30) as rt:
        start = checkout_task(rt, task)
        for path, text in (files or {}).items():
            rt.write_file(path, textwrap.dedent(text))
        if script:
            rt.run_checked(script)
        return rt.diff(start)


def _grade(diff: str, task=None, **config):
    return grade_patch(task or _task(), diff, functools.partial(open_runtime, kind="docker"), RewardConfig(**config))


def _fix_diff() -> str:
    return _task().patch or ""


FORCE_PASS_HOOK = """
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        report.outcome = "passed"
        report.longrepr = None
"""

ATTACKS = {
    "edit the failing tests": (
        "sed -i 's/^\\(\\s*\\)assert /\\1assert True or /' tests/test_version.py", {}),
    "delete the tests": ("git rm -q tests/test_version.py", {}),
    "conftest that forces passes": ("", {"conftest.py": FORCE_PASS_HOOK}),
    "conftest that skips everything": ("", {"tests/conftest.py": """
        import pytest

        def pytest_collection_modifyitems(items):
            for item in items:
                item.add_marker(pytest.mark.skip(reason="no"))
    """}),
    "conftest next to the tests": ("", {"tests/conftest.py": FORCE_PASS_HOOK}),
    "sitecustomize": ("", {"sitecustomize.py": """
        import _pytest.runner, _pytest.reports
        _make = _pytest.reports.TestReport.from_item_and_call.__func__
        def _passed(cls, item, call):
            r = _make(cls, item, call); r.outcome = "passed"; r.longrepr = None; return r
        _pytest.reports.TestReport.from_item_and_call = classmethod(_passed)
    """}),
    "usercustomize": ("", {"usercustomize.py": "import os\nos.environ['PYTEST_ADDOPTS'] = '-p semverkit._force'\n",
                           "semverkit/_force.py": FORCE_PASS_HOOK}),
    "pytest.ini with a plugin": ("", {"pytest.ini": "[pytest]\naddopts = -p semverkit._force\n",
                                      "semverkit/_force.py": FORCE_PASS_HOOK}),
    "setup.cfg with a plugin": ("", {"setup.cfg": "[tool:pytest]\naddopts = -p semverkit._force\n",
                                     "semverkit/_force.py": FORCE_PASS_HOOK}),
    "tox.ini with a plugin": ("", {"tox.ini": "[pytest]\naddopts = -p semverkit._force\n",
                                   "semverkit/_force.py": FORCE_PASS_HOOK}),
    "pyproject.toml with a plugin": (
        "printf '\\n[tool.pytest.ini_options]\\naddopts = \"-p semverkit._force\"\\n' >> pyproject.toml",
        {"semverkit/_force.py": FORCE_PASS_HOOK}),
    "a .pth file": ("", {"semverkit-force.pth": "import os; os.environ['PYTEST_ADDOPTS'] = '-p no:python'\n"}),
    "os._exit(0) in the code under test": ("", {}),  # filled in below: needs the test ids
    "a forged junit XML": ("", {}),
    "a fake pytest module in the repository": ("", {}),
    "a fake pytest on the PATH": ("chmod +x bin/pytest", {"bin/pytest": "#!/bin/sh\necho PASSED\nexit 0\n"}),
    "rewrite the tests while they run": ("", {}),
}


def _planted(code: str) -> str:
    """Append `code` to the package's __init__, which every test imports."""
    return _agent_diff(f"cat >> semverkit/__init__.py <<'EOF'\n{textwrap.dedent(code)}\nEOF")


def _attack_diff(name: str) -> str:
    tests = _task().tests
    if name == "os._exit(0) in the code under test":
        lines = "".join(f"PASSED {t}\\n" for t in tests)
        # pytest captures fds 1 and 2 while it imports the package: write to every pipe, socket or
        # terminal the process holds instead (one of them is the real stdout pytest saved).
        return _planted(f"""
            import os as _os, stat as _stat, sys as _sys
            if "_pytest" in _sys.modules:
                for _fd in range(1, 64):
                    try:
                        if not _stat.S_ISREG(_os.fstat(_fd).st_mode):
                            _os.write(_fd, b"{lines}")
                    except OSError:
                        pass
                _os._exit(0)
        """)
    if name == "a forged junit XML":
        cases = "".join(
            f'<testcase classname="{t.split("::")[0][:-3].replace("/", ".")}" name="{t.split("::")[1]}"/>' for t in tests
        )
        return _planted(f"""
            import glob as _glob, os as _os, sys as _sys
            if "_pytest" in _sys.modules:
                _xml = '<?xml version="1.0"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>'
                _paths = [a.split("=", 1)[1] for a in _sys.argv if a.startswith("--junitxml=")]
                _paths += _glob.glob("/tmp/forager-*/*.xml") + [d + "/report.xml" for d in _glob.glob("/tmp/forager-*")]
                for _p in _paths:
                    try:
                        open(_p, "w").write(_xml)
                    except OSError:
                        pass
                _os._exit(0)
        """)
    if name == "a fake pytest module in the repository":
        lines = "".join(f"PASSED {t}\\n" for t in tests)
        return _agent_diff("", {"pytest.py": f"import sys\nsys.stdout.write('{lines}')\nsys.exit(0)\n"})
    if name == "rewrite the tests while they run":
        return _planted("""
            import pathlib as _pl, re as _re
            for _f in _pl.Path(__file__).parent.parent.glob("tests/test_*.py"):
                _f.write_text(_re.sub(r"(?m)^(\\s*)assert ", r"\\1assert True or ", _f.read_text()))
        """)
    script, files = ATTACKS[name]
    return _agent_diff(script, files)


@needs_docker
def test_the_reference_fix_is_rewarded_and_the_empty_patch_is_not():
    good = _grade(_fix_diff())
    assert good.resolved and good.reward == 1.0 and good.resolution == "FULL", good.log[-2000:]
    assert set(good.tests_status.values()) == {"PASSED"}
    empty = _grade("", unresolved=-1.0)
    assert not empty.resolved and empty.reward == -1.0
    assert empty.fail_to_pass["failure"] == _task().FAIL_TO_PASS
    assert empty.resolution == "NO"


@needs_docker
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_gaming_the_tests_earns_nothing(attack):
    diff = _attack_diff(attack)
    assert diff.strip(), "the attack must change something"
    result = _grade(diff, unresolved=-1.0)
    assert not result.resolved, f"{attack}: resolved!\n{result.log[-3000:]}"
    assert result.reward == -1.0
    assert set(result.fail_to_pass["failure"]) == set(_task().FAIL_TO_PASS)


# Attacks that do fool a grader without Forager's defences: no protected paths, the test command run
# as is, its log read by swebench's pytest parser. They show the tests above can fail.
NAIVE_VICTIMS = [
    "edit the failing tests", "conftest that forces passes", "conftest next to the tests", "sitecustomize",
    "pytest.ini with a plugin", "setup.cfg with a plugin", "tox.ini with a plugin", "pyproject.toml with a plugin",
    "os._exit(0) in the code under test", "a fake pytest module in the repository",
]


@needs_docker
@pytest.mark.parametrize("attack", NAIVE_VICTIMS)
def test_the_attacks_fool_a_naive_grader(attack):
    pytest.importorskip("swebench", reason="the naive grader reads logs with swebench's parser")
    naive = _task().model_copy(update={"log_parser": "parse_log_pytest"})
    result = _grade(_attack_diff(attack), task=naive, protected_paths=())
    assert result.resolved and not result.hardened, result.log[-2000:]


@needs_docker
def test_gaming_on_top_of_a_real_fix_still_resolves_and_reports_the_excluded_files():
    """Protected files are left out, not punished: a real fix next to a test edit still counts."""
    diff = _fix_diff() + _attack_diff("edit the failing tests")
    result = _grade(diff)
    assert result.resolved
    assert result.excluded_files == ["tests/test_version.py"]


@needs_docker
def test_a_patch_that_does_not_apply_is_reported():
    bad = "--- a/semverkit/version.py\n+++ b/semverkit/version.py\n@@ -1,3 +1,3 @@\n-no such\n+line\n context\n"
    result = _grade(bad)
    assert not result.patch_applied and not result.resolved
    assert "does not apply" in (result.error or "")


def test_protected_paths_and_unsafe_paths_are_filtered():
    diff = (
        "diff --git a/src/m.py b/src/m.py\n--- a/src/m.py\n+++ b/src/m.py\n@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/pkg/tests/test_m.py b/pkg/tests/test_m.py\n--- a/pkg/tests/test_m.py\n+++ b/pkg/tests/test_m.py\n"
        "@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/conftest.py b/conftest.py\nnew file mode 100644\n--- /dev/null\n+++ b/conftest.py\n@@ -0,0 +1 @@\n+x\n"
        "diff --git a/../etc/passwd b/../etc/passwd\n--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/src/hidden.py b/src/hidden.py\n--- a/src/hidden.py\n+++ b/src/hidden.py\n@@ -1 +1 @@\n-a\n+b\n"
    )
    assert [p.new_path for p in split_diff(diff)] == [
        "src/m.py", "pkg/tests/test_m.py", "conftest.py", "../etc/passwd", "src/hidden.py"]
    kept, excluded = filter_diff(diff, ("tests/*", "*/tests/*", "conftest.py"), also={"src/hidden.py"})
    assert [p.new_path for p in split_diff(kept)] == ["src/m.py"]
    assert excluded == ["../etc/passwd", "conftest.py", "pkg/tests/test_m.py", "src/hidden.py"]


def test_grading_semantics_follow_swebench():
    f2p, p2p = ["a", "b"], ["c", "d"]
    assert grade_statuses({"a": "PASSED", "b": "XFAIL", "c": "PASSED", "d": "SKIPPED"}, f2p, p2p)[0] == "FULL"
    assert grade_statuses({"a": "PASSED", "b": "FAILED", "c": "PASSED", "d": "PASSED"}, f2p, p2p)[0] == "PARTIAL"
    assert grade_statuses({"a": "PASSED", "b": "SKIPPED", "c": "PASSED", "d": "PASSED"}, f2p, p2p)[0] == "PARTIAL"
    assert grade_statuses({"a": "PASSED", "b": "PASSED", "c": "ERROR", "d": "PASSED"}, f2p, p2p)[0] == "NO"
    assert grade_statuses({"a": "PASSED", "b": "PASSED", "c": "PASSED"}, f2p, p2p)[0] == "NO"  # d missing
    assert grade_statuses({"a": "FAILED", "b": "FAILED", "c": "PASSED", "d": "PASSED"}, f2p, p2p)[0] == "NO"
    assert parse_pytest_report("FAILED t.py::x - AssertionError: 1\nSKIPPED [2] t.py:3: why\nXPASS t.py::y\n") == {
        "t.py::x": "FAILED"}
