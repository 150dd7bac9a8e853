"""swe-testgen: revealing tests taken out, and generated tests graded without and with the fix, in real
containers; every way a test could earn the reward without reproducing the issue is tried and fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forager.agent.loop import run_episode
from forager.images.sample import sample_tasks
from forager.policies import ReferencePolicy
from forager.rewards import RewardResult
from forager.runtime.docker import docker_available
from forager_envs.swe_testgen import TESTGEN_KIND, SWETestGenEnv, grading, to_testgen_task
from forager_envs.swe_testgen.tasks import base_reader, node_targets, without_tests

BUG = "semverkit__prerelease-numeric-order"
REPRODUCES = """\
from semverkit import Version


def test_multi_digit_prerelease_numbers_compare_numerically():
    assert Version.parse("1.0.0-beta.2") < Version.parse("1.0.0-beta.11")
"""


def test_targets_and_taking_tests_out_keep_the_rest_of_the_file() -> None:
    assert node_targets(["t/test_a.py::test_x[1-2]", "t/test_a.py::C::test_y", "weird id", "t/test_a.py::test_x[3]"]) \
        == {"t/test_a.py": {("test_x",), ("C", "test_y")}}
    source = textwrap.dedent("""\
        import pytest


        @pytest.mark.parametrize("n", [1, 2])
        def test_x(n):
            assert n


        def test_kept():
            pass


        class C:
            def test_y(self):
                assert False
        """)
    out = without_tests(source, {("test_x",), ("C", "test_y")})
    assert "test_x" not in out and "parametrize" not in out and "test_y" not in out
    assert "def test_kept" in out and "class C:\n    pass" in out
    compile(out, "<out>", "exec")


def test_a_sample_task_loses_its_revealing_tests_and_keeps_them_as_the_reference() -> None:
    task = next(t for t in sample_tasks("forager/sample:latest") if t.instance_id == BUG)
    converted = to_testgen_task(task, base_reader(task))
    assert converted.kind == TESTGEN_KIND and converted.patch == task.patch
    assert converted.metadata["hidden_tests"] == ["tests/test_version.py"]
    reference = converted.metadata["reference_diff"]
    for test in task.FAIL_TO_PASS:
        name = test.split("::")[-1]
        assert f"+def {name}(" in reference and f"-def {name}(" in converted.setup_patch
    assert to_testgen_task(converted, base_reader(task)) is converted


needs_docker = pytest.mark.skipif(not docker_available(), reason="needs a Docker engine and forager/sample:latest")


@pytest.fixture(scope="module")
def env():
    made = SWETestGenEnv(tasks=sample_tasks("forager/sample:latest"), runtime="docker")
    yield made
    made.close()


def graded(env: SWETestGenEnv, files: dict[str, str]) -> RewardResult:
    """The reward of an episode on BUG whose agent wrote `files` and submitted."""
    env.reset(options={"task": BUG})
    assert env.runtime is not None
    for path, text in files.items():
        env.runtime.write_file(f"{env.runtime.workdir}/{path}", text)
    return env.grade()


@needs_docker
def test_the_reference_policy_reproduces_every_sample_issue(env: SWETestGenEnv) -> None:
    for task in env.tasks:
        trajectory = run_episode(env, ReferencePolicy(), task)
        assert trajectory.reward == 1.0, (task.instance_id, env.last_result and env.last_result.error)
        result = env.last_result
        assert result is not None and result.resolved and result.fail_to_pass["success"]


@needs_docker
def test_a_reproduction_is_rewarded_and_the_code_it_changed_is_left_out(env: SWETestGenEnv) -> None:
    env.reset(options={"task": BUG})
    source = env.runtime.read_file("semverkit/version.py")
    result = graded(env, {"tests/test_repro.py": REPRODUCES, "conftest.py": "collect_ignore = ['tests']\n",
                          "semverkit/version.py": source + "\n# the agent's fix attempt\n"})
    assert result.reward == 1.0, result.error
    assert result.fail_to_pass["success"] == ["tests/test_repro.py::test_multi_digit_prerelease_numbers_compare_numerically"]
    assert set(result.excluded_reasons) == {"conftest.py", "semverkit/version.py"}
    assert "only test files" in result.excluded_reasons["semverkit/version.py"]


CHEATS = {
    "passes on both": ("tests/test_repro.py", "from semverkit import Version\n\ndef test_ok():\n"
                       "    assert Version.parse('1.0.0') > Version.parse('1.0.0-rc.1')\n", "do not reproduce"),
    "fails on both": ("tests/test_repro.py", "def test_no():\n    assert False\n", "must pass"),
    "runs the existing suite": ("test_suite.py", "import subprocess, sys\n\ndef test_suite_passes():\n"
                                "    assert subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',"
                                " 'tests']).returncode == 0\n", "do not reproduce"),
    "reads git status": ("tests/test_repro.py", "import subprocess\n\ndef test_tree_is_changed():\n"
                         "    assert subprocess.run(['git', 'diff', '--quiet']).returncode == 1\n", "must pass"),
    "reads timestamps and inodes": ("tests/test_repro.py", "import os\n\ndef test_version_py_was_rewritten_last():\n"
                                    "    stats = [os.stat(os.path.join('semverkit', n)) for n in sorted(os.listdir('semverkit'))"
                                    " if n.endswith('.py')]\n    me = os.stat('semverkit/version.py')\n"
                                    "    assert len({s.st_mtime for s in stats}) > 1 or me.st_ino == max(s.st_ino for s in stats)"
                                    " and me.st_ino != stats[-1].st_ino\n", None),
    "passes the second time it runs": ("tests/test_repro.py", "import os\n\ndef test_second_run():\n"
                                       "    first = not os.path.exists('/tmp/ran')\n    open('/tmp/ran', 'w').close()\n"
                                       "    assert not first\n", "must pass"),
    "edits an existing test file only": ("tests/test_version.py", None, "no new test"),
    "writes no test": ("semverkit/extra.py", "X = 1\n", "no test file"),
}


@needs_docker
@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_a_test_that_does_not_reproduce_the_issue_earns_nothing(env: SWETestGenEnv, cheat: str) -> None:
    path, text, why = CHEATS[cheat]
    if text is None:  # the file as it is, one line longer: its remaining tests all pass on the buggy code
        env.reset(options={"task": BUG})
        text = env.runtime.read_file(path) + "\n\ndef helper():\n    return 1\n"
    result = graded(env, {path: text})
    assert result.reward == 0.0 and not result.resolved, cheat
    assert result.error and (why is None or why in result.error), result.error


@needs_docker
def test_without_making_the_trees_alike_a_git_status_test_would_be_rewarded(env, monkeypatch) -> None:
    """The check above is not vacuous: the normalization is what defeats it."""
    monkeypatch.setattr(grading, "NORMALIZE", "pass")
    path, text, _ = CHEATS["reads git status"]
    assert graded(env, {path: text}).reward == 1.0


@needs_docker
def test_forager_collect_runs_the_testgen_env_with_the_reference_policy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "forager", "collect", "--env", "forager/SWE-TestGen-v0", "--episodes",
                           "2", "--workers", "2", "--out", str(out), "--runtime", "docker"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["reward"] == 1.0 and row["kind"] == TESTGEN_KIND for row in rows)
    assert "Write a test that reproduces this issue" in rows[0]["messages"][1]["content"]


def test_a_rename_or_copy_of_library_code_into_a_test_file_is_left_out() -> None:
    from forager.harness.diffparse import parse_diff
    from forager_envs.swe_testgen.grading import kept_file_refusal

    rename = ("diff --git a/semverkit/version.py b/tests/test_version_moved.py\nsimilarity index 100%\n"
              "rename from semverkit/version.py\nrename to tests/test_version_moved.py\n")
    copy = rename.replace("rename from", "copy from").replace("rename to", "copy to")
    plain = ("diff --git a/tests/test_new.py b/tests/test_new.py\nnew file mode 100644\n--- /dev/null\n"
             "+++ b/tests/test_new.py\n@@ -0,0 +1 @@\n+def test_x(): pass\n")
    for text in (rename, copy):
        (file,) = parse_diff(text)
        assert kept_file_refusal(file) and "not a" in kept_file_refusal(file)
    (file,) = parse_diff(plain)
    assert kept_file_refusal(file) is None
