"""Task files: every source and format `load_tasks` reads, with real files, real Parquet and real git."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forager.core import ForagerError, Task
from forager import load_tasks as core_load_tasks
from forager.tasks.diffs import DiffError, reverse_diff
from forager.tasks.formats import (
    FALLBACK_TEST_COMMAND,
    TaskLoadError,
    swebench_image_name,
    task_from_record,
    to_swebench_instance,
)
from forager.tasks.store import load_tasks, read_records, write_tasks

ASTROPY_PATCH = """\
diff --git a/astropy/io/ascii/qdp.py b/astropy/io/ascii/qdp.py
--- a/astropy/io/ascii/qdp.py
+++ b/astropy/io/ascii/qdp.py
@@ -68,7 +68,7 @@ def _line_type(line, delimiter=None):
     _new_re = rf"NO({sep}NO)+"
     _data_re = rf"({_decimal_re}|NO|[-+]?nan)({sep}({_decimal_re}|NO|[-+]?nan))*)"
     _type_re = rf"^\\s*((?P<command>{_command_re})|(?P<new>{_new_re})|(?P<data>{_data_re})?\\s*(\\!(?P<comment>.*))?\\s*$"
-    _line_type_re = re.compile(_type_re)
+    _line_type_re = re.compile(_type_re, re.IGNORECASE)
     line = line.strip()
     if not line:
         return "comment"
"""
ASTROPY_TEST_PATCH = """\
diff --git a/astropy/io/ascii/tests/test_qdp.py b/astropy/io/ascii/tests/test_qdp.py
--- a/astropy/io/ascii/tests/test_qdp.py
+++ b/astropy/io/ascii/tests/test_qdp.py
@@ -43,7 +43,18 @@ def test_get_tables_from_qdp_file(tmp_path):
     assert np.isclose(table2["MJD_nerr"][0], -2.37847222222222e-05)


-def test_roundtrip(tmp_path):
+def lowercase_header(value):
+    return "\\n".join(line.lower() for line in value.splitlines())
+
+
+@pytest.mark.parametrize("lowercase", [False, True])
+def test_roundtrip(tmp_path, lowercase):
     example_qdp = \"\"\"
"""
ASTROPY_BASE = "7269fa3e33e8d02485a647da91a5a2a60a06af61"
ASTROPY_EVAL_SCRIPT = f"""\
#!/bin/bash
set -uxo pipefail
source /opt/miniconda3/bin/activate
conda activate testbed
cd /testbed
git config --global --add safe.directory /testbed
git status
git -c core.fileMode=false diff {ASTROPY_BASE}
git checkout {ASTROPY_BASE} astropy/io/ascii/tests/test_qdp.py
git apply -v - <<'EOF_114329324912'
{ASTROPY_TEST_PATCH}
EOF_114329324912
: '>>>>> Start Test Output'
pytest -rA astropy/io/ascii/tests/test_qdp.py
: '>>>>> End Test Output'
git checkout {ASTROPY_BASE} astropy/io/ascii/tests/test_qdp.py
"""
# A SWE-bench Verified row as swebench 5 datasets ship it: test lists JSON-encoded, plus the columns
# swebench 5 added (image, log_parser, eval_type, eval_script) and Verified's `difficulty`.
VERIFIED = {
    "repo": "astropy/astropy",
    "instance_id": "astropy__astropy-14365",
    "base_commit": ASTROPY_BASE,
    "patch": ASTROPY_PATCH,
    "test_patch": ASTROPY_TEST_PATCH,
    "problem_statement": "ascii.qdp Table format assumes QDP commands are upper case\n\n"
    "ascii.qdp assumes that commands in a QDP file are upper case, e.g. `READ SERR 1 2`,\n"
    "whereas QDP itself is not case sensitive and accepts `read serr 1 2`.\n",
    "hints_text": "Welcome to Astropy! Thank you for your first issue.",
    "created_at": "2023-02-06T19:20:34Z",
    "version": "5.1",
    "FAIL_TO_PASS": '["astropy/io/ascii/tests/test_qdp.py::test_roundtrip[True]"]',
    "PASS_TO_PASS": json.dumps([
        "astropy/io/ascii/tests/test_qdp.py::test_get_tables_from_qdp_file",
        "astropy/io/ascii/tests/test_qdp.py::test_roundtrip[False]",
        "astropy/io/ascii/tests/test_qdp.py::test_read_example",
    ]),
    "environment_setup_commit": "5f74eacbcc7fff707a44d8eb58adaa514cb7dcb5",
    "difficulty": "15 min - 1 hour",
    "image": "swebench/sweb.eval.x86_64.astropy_1776_astropy-14365:latest",
    "log_parser": "parse_log_astropy",
    "eval_type": "pass_and_fail",
    "eval_script": ASTROPY_EVAL_SCRIPT,
}
# SWE-Gym: the SWE-bench schema only, test lists as real lists, no image and no eval script.
SWE_GYM = {
    "instance_id": "getmoto__moto-5752",
    "hints_text": "",
    "patch": "diff --git a/moto/ssm/models.py b/moto/ssm/models.py\n--- a/moto/ssm/models.py\n"
    "+++ b/moto/ssm/models.py\n@@ -1 +1 @@\n-KEY_LIMIT = 10\n+KEY_LIMIT = 50\n",
    "test_patch": "diff --git a/tests/test_ssm/test_ssm_boto3.py b/tests/test_ssm/test_ssm_boto3.py\n",
    "created_at": "2022-12-10 20:23:01",
    "problem_statement": "describe_parameters rejects filters with more than 10 tags",
    "repo": "getmoto/moto",
    "base_commit": "b2300f1eae1323e3e8bc45f97e530ce129dff12e",
    "version": "4.0",
    "PASS_TO_PASS": ["tests/test_ssm/test_ssm_boto3.py::test_get_parameter"],
    "FAIL_TO_PASS": ["tests/test_ssm/test_ssm_boto3.py::test_describe_parameters__multiple_tags"],
}
UTIL_BEFORE = "def clamp(value, low, high):\n    return max(low, min(value, high))\n"
SWE_SMITH_BUG = """\
diff --git a/oauthlib/util.py b/oauthlib/util.py
index 1a2b3c4..5d6e7f8 100644
--- a/oauthlib/util.py
+++ b/oauthlib/util.py
@@ -1,2 +1,2 @@
 def clamp(value, low, high):
-    return max(low, min(value, high))
+    return min(low, max(value, high))
"""
# A SWE-smith row: the patch plants the bug; no base commit, and often no problem statement.
SWE_SMITH = {
    "instance_id": "oauthlib__oauthlib.1fd52536.func_basic__2d1xe6tu",
    "repo": "swesmith/oauthlib__oauthlib.1fd52536",
    "patch": SWE_SMITH_BUG,
    "FAIL_TO_PASS": ["tests/test_util.py::test_clamp"],
    "PASS_TO_PASS": ["tests/test_util.py::test_other"],
    "created_at": "2025-03-14T21:09:47.553411",
    "image_name": "jyangballin/swesmith.x86_64.oauthlib_1776_oauthlib.1fd52536",
    "problem_statement": "",
}
FORAGER = Task(
    instance_id="demo-1",
    problem_statement="greet() says hi with a comma.\u2028A line separator and \x0c a form feed survive.",
    kind="mutate-fix",
    image="forager/sample:latest",
    setup_patch="diff --git a/x b/x\n",
    FAIL_TO_PASS=["tests/test_x.py::test_a"],
    metadata={"operator": "swap_args"},
)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


# Sources.


def test_jsonl_json_and_parquet_give_the_same_tasks(tmp_path):
    records = [VERIFIED, SWE_GYM | {"PASS_TO_PASS": json.dumps(SWE_GYM["PASS_TO_PASS"]),
                                    "FAIL_TO_PASS": json.dumps(SWE_GYM["FAIL_TO_PASS"])}]
    (tmp_path / "tasks.json").write_text(json.dumps(records))
    sources = [write_jsonl(tmp_path / "tasks.jsonl", records), tmp_path / "tasks.json",
               write_parquet(tmp_path / "tasks.parquet", records)]
    loaded = [load_tasks(source) for source in sources]
    assert [t.instance_id for t in loaded[0]] == ["astropy__astropy-14365", "getmoto__moto-5752"]
    assert loaded[0] == loaded[1] == loaded[2]
    assert read_records(sources[0]) == read_records(sources[1]) == records
    # Parquet aligns the columns: the SWE-Gym row has nulls where Verified has more, and nulls are no data.
    from_parquet = read_records(sources[2])
    assert from_parquet[0] == VERIFIED and from_parquet[1]["eval_script"] is None


def test_a_single_json_object_is_one_task(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(SWE_GYM))
    assert [t.instance_id for t in load_tasks(tmp_path / "one.json")] == ["getmoto__moto-5752"]


def test_local_dataset_directory_is_read_as_the_hub_would_be(tmp_path):
    # The layout of a hub dataset repository: DIR/data/<split>-00000-of-00001.parquet.
    write_parquet(tmp_path / "verified" / "data" / "test-00000-of-00001.parquet", [VERIFIED])
    # Every split of a dataset has the same columns.
    write_parquet(tmp_path / "verified" / "data" / "train-00000-of-00001.parquet",
                  [VERIFIED | {"instance_id": "astropy__astropy-12907"}])
    assert read_records(str(tmp_path / "verified"), split="test") == [VERIFIED]
    (task,) = core_load_tasks(tmp_path / "verified", split="train")
    assert task.instance_id == "astropy__astropy-12907"
    with pytest.raises(TaskLoadError, match="cannot read split 'dev' of this dataset directory"):
        read_records(tmp_path / "verified", split="dev")


def test_jsonl_dataset_directory(tmp_path):
    (tmp_path / "smith").mkdir()
    write_jsonl(tmp_path / "smith" / "train.jsonl", [SWE_SMITH])
    (task,) = load_tasks(tmp_path / "smith", split="train")
    assert task.kind == "mutate-fix"


def test_a_hub_name_goes_to_the_hub_and_says_what_to_do_when_it_is_unreachable():
    # In a fresh interpreter: offline mode is read when `datasets` is imported.
    code = "from forager.tasks.store import read_records; read_records('forager-tests/no-such-dataset')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "TaskLoadError" in message and "'forager-tests/no-such-dataset'" in message
    assert "hub may be unreachable" in message and "pass a local" in message


def test_a_hub_name_without_datasets_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # what an uninstalled package looks like to import
    with pytest.raises(TaskLoadError, match=r"pip install 'forager\[eval\]'"):
        read_records("princeton-nlp/SWE-bench_Verified", split="test")


@pytest.mark.parametrize("missing", ["nope/tasks.jsonl", "tasks.parquet", "./data", "/no/such/dir", "a/b/c"])
def test_a_missing_path_is_no_such_file_not_a_hub_lookup(tmp_path, missing, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # a hub lookup would fail differently
    with pytest.raises(TaskLoadError, match="no such file or directory"):
        read_records(missing)
    with pytest.raises(TaskLoadError, match="no such file or directory"):
        load_tasks(Path("plain-name"))  # a Path is always local


def test_errors_name_the_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(FORAGER.model_dump_json() + "\n\n{not json\n")
    with pytest.raises(TaskLoadError, match=r"tasks\.jsonl:3: not valid JSON"):
        load_tasks(path)
    path.write_text(FORAGER.model_dump_json() + "\n" + json.dumps({"instance_id": "x"}) + "\n")
    with pytest.raises(TaskLoadError, match=r"tasks\.jsonl:2: not a valid task \(neither a Forager task"):
        load_tasks(path)
    with pytest.raises(ValueError, match=r"tasks\.jsonl:2"):  # still a ValueError, as it always was
        core_load_tasks(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(TaskLoadError, match=r"tasks\.jsonl:1: expected a JSON object, got list"):
        load_tasks(path)
    (tmp_path / "tasks.json").write_text("[1, 2]\n")
    with pytest.raises(TaskLoadError, match=r"tasks\.json row 0: expected an object, got int"):
        load_tasks(tmp_path / "tasks.json")


def test_unknown_format_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "tasks.jsonl", [SWE_GYM])
    with pytest.raises(TaskLoadError, match="unknown task format 'swe-gym': use one of auto, forager"):
        load_tasks(path, format="swe-gym")  # type: ignore[arg-type]
    with pytest.raises(TaskLoadError, match="unknown task format"):
        task_from_record(SWE_GYM, format="SWEBENCH")  # type: ignore[arg-type]


def test_a_forced_format_is_strict(tmp_path):
    path = write_jsonl(tmp_path / "tasks.jsonl", [SWE_GYM])
    with pytest.raises(TaskLoadError, match=r"(?s)tasks\.jsonl:1: not a valid task \(forager\).*neither an `image`"):
        load_tasks(path, format="forager")
    with pytest.raises(TaskLoadError, match="not a swebench instance: it has no base_commit"):
        task_from_record({"instance_id": "x", "repo": "o/r"}, format="swebench")


# Formats.


def test_forager_round_trip_through_write_tasks(tmp_path):
    tasks = [FORAGER, FORAGER.model_copy(update={"instance_id": "demo-2"})]
    path = write_tasks(tasks, tmp_path / "out.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind
    assert path.read_text().count("\n") == 2  # U+2028 stays raw inside a line, and the line stays one
    assert load_tasks(path) == core_load_tasks(str(path)) == tasks
    write_tasks([FORAGER], path)  # replaces the file
    assert load_tasks(path) == [FORAGER]


def test_a_forager_task_with_a_typo_is_not_taken_for_a_swebench_instance():
    record = json.loads(FORAGER.model_dump_json()) | {"repo": "o/r", "base_commit": "abc", "test_comand": "pytest"}
    with pytest.raises(ValueError, match="test_comand"):
        task_from_record(record)


def test_verified_instance(tmp_path):
    task = task_from_record(VERIFIED)
    assert task.kind == "issue-fix" and task.workdir == "/testbed" and task.log_parser == "swebench"
    assert task.image == VERIFIED["image"]
    assert task.FAIL_TO_PASS == ["astropy/io/ascii/tests/test_qdp.py::test_roundtrip[True]"]
    assert task.PASS_TO_PASS[0] == "astropy/io/ascii/tests/test_qdp.py::test_get_tables_from_qdp_file"
    assert (task.base_commit, task.version, task.patch, task.test_patch) == (
        ASTROPY_BASE, "5.1", ASTROPY_PATCH, ASTROPY_TEST_PATCH)
    # Keys the Task has no field for are kept under their own names.
    assert task.metadata == {
        "difficulty": "15 min - 1 hour", "log_parser": "parse_log_astropy", "eval_type": "pass_and_fail",
        "eval_script": ASTROPY_EVAL_SCRIPT, "test_command_source": "eval_script",
    }


def test_swebench_test_command_is_the_eval_scripts_without_its_test_files():
    # swebench 5 ships the test run in each instance's eval script; Forager appends test ids instead.
    task = task_from_record(VERIFIED)
    assert task.test_command == "source /opt/miniconda3/bin/activate && conda activate testbed && pytest -rA"
    django = VERIFIED | {
        "repo": "django/django",
        "test_patch": "diff --git a/tests/admin_views/tests.py b/tests/admin_views/tests.py\n",
        "eval_script": "source /opt/miniconda3/bin/activate\nconda activate testbed\n: '>>>>> Start Test Output'\n"
        "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 admin_views.tests\n"
        ": '>>>>> End Test Output'\n",
    }
    assert task_from_record(django).test_command == (
        "source /opt/miniconda3/bin/activate && conda activate testbed && "
        "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1")


def test_swebench_4_specs_give_the_test_command(monkeypatch):
    # swebench < 5 has no eval scripts in its datasets but a table of test commands per repo and version.
    import swebench.harness.constants as constants

    specs = {"astropy/astropy": {"5.1": {"test_cmd": "pytest -rA -vv -o console_output_style=classic --tb=no"}},
             "getmoto/moto": {"4.0": {"test_cmd": ["make init", "pytest -n0 -rA"]}}}
    monkeypatch.setattr(constants, "MAP_REPO_VERSION_TO_SPECS", specs, raising=False)
    bare = {k: v for k, v in VERIFIED.items() if k not in ("eval_script", "image", "log_parser", "eval_type")}
    task = task_from_record(bare)
    assert task.test_command == (
        "source /opt/miniconda3/bin/activate && conda activate testbed && "
        "pytest -rA -vv -o console_output_style=classic --tb=no")
    assert task.metadata["test_command_source"] == "MAP_REPO_VERSION_TO_SPECS"
    assert task_from_record(SWE_GYM).test_command.endswith("conda activate testbed && make init && pytest -n0 -rA")


def test_swe_gym_instance_gets_swebench_image_name_and_default_test_command():
    task = task_from_record(SWE_GYM)
    # swebench 5.0.2 task/checks.py expected_image: the published name of this instance's image.
    from swebench.task.checks import expected_image

    assert task.image == expected_image("getmoto__moto-5752") == swebench_image_name("getmoto__moto-5752")
    assert task.image == "swebench/sweb.eval.x86_64.getmoto_1776_moto-5752:latest"
    assert task.test_command == FALLBACK_TEST_COMMAND
    assert task.metadata == {"test_command_source": "default"}
    assert task.environment_setup_commit is None and task.hints_text == ""
    assert task_from_record(SWE_GYM, image="xingyaoww/sweb.eval.x86_64.getmoto_s_moto-5752").image == (
        "xingyaoww/sweb.eval.x86_64.getmoto_s_moto-5752")


def test_image_argument_keeps_the_records_own_image_in_metadata():
    task = task_from_record(VERIFIED, image="mirror.local/astropy-14365")
    assert task.image == "mirror.local/astropy-14365"
    assert task.metadata["image"] == VERIFIED["image"]


def test_swe_smith_instance_plants_the_bug_and_its_reverse_is_the_fix(tmp_path):
    task = task_from_record(SWE_SMITH)
    assert task.kind == "mutate-fix" and task.base_commit == "HEAD" and task.workdir == "/testbed"
    assert task.image == SWE_SMITH["image_name"] and task.setup_patch == SWE_SMITH_BUG
    assert "tests/test_util.py::test_clamp" in task.problem_statement  # the record had none
    assert task.test_command == FALLBACK_TEST_COMMAND and task.log_parser == "pytest"
    assert task.repo == "swesmith/oauthlib__oauthlib.1fd52536"
    assert task.metadata == {"test_command_source": "default"}
    # In a real repository: the bug applies to the clean file, and the fix takes it back.
    repo = make_repo(tmp_path, {"oauthlib/util.py": UTIL_BEFORE})
    git(repo, "apply", input=task.setup_patch)
    assert (repo / "oauthlib/util.py").read_text() != UTIL_BEFORE
    git(repo, "apply", input=task.patch)
    assert (repo / "oauthlib/util.py").read_text() == UTIL_BEFORE


def test_swe_smith_is_recognised_by_its_id_and_keeps_unknown_keys():
    record = {k: v for k, v in SWE_SMITH.items() if k != "image_name"} | {
        "problem_statement": "clamp() returns the wrong bound", "base_commit": "0123abcd", "split": "train"}
    task = task_from_record(record, image="swesmith/oauthlib:local")
    assert task.kind == "mutate-fix" and task.image == "swesmith/oauthlib:local"
    assert task.problem_statement == "clamp() returns the wrong bound" and task.base_commit == "HEAD"
    assert task.metadata == {"base_commit": "0123abcd", "split": "train", "test_command_source": "default"}
    with pytest.raises(TaskLoadError, match="has no image_name: pass image="):
        task_from_record(record)


def test_to_swebench_instance_round_trip():
    task = task_from_record(VERIFIED)
    instance = to_swebench_instance(task)
    assert instance == VERIFIED  # what came in goes back out, test lists as JSON strings
    assert task_from_record(instance) == task
    gym = task_from_record(SWE_GYM)
    instance = to_swebench_instance(gym)
    assert json.loads(instance["FAIL_TO_PASS"]) == SWE_GYM["FAIL_TO_PASS"]
    assert instance["environment_setup_commit"] == "" and instance["image"] == gym.image
    # Only SWE-bench's keys and an image also make a valid Forager task, which "auto" reads first.
    assert task_from_record(instance, format="swebench") == gym
    assert task_from_record(instance).workdir == "/repo"
    with pytest.raises(ForagerError, match="setup_patch"):
        to_swebench_instance(task_from_record(SWE_SMITH))


# reverse_diff, checked with real git.


def git(repo: Path, *args: str, input: str | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    # Bytes, not text=True, whose universal newlines would turn CRLF into LF.
    done = subprocess.run(["git", *args], cwd=repo, input=None if input is None else input.encode(),
                          capture_output=True, env=env)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def make_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "before")
    return repo


LONG = "".join(f"line {i}\n" for i in range(1, 41))
BEFORE = {
    "long.txt": LONG,
    "gone.txt": "soon deleted\nsecond line\n",
    "no_newline.txt": "first\nlast without newline",
    "gains_newline.txt": "alpha\nbeta",
    "loses_newline.txt": "alpha\nbeta\n",
    "script.sh": "echo hi\n",
    "old name.py": "".join(f"value_{i} = {i}\n" for i in range(12)),
    "moved.txt": "".join(f"row {i}\n" for i in range(10)),
    "empty_soon.txt": "x\n",
}


def change_everything(repo: Path) -> None:
    lines = LONG.splitlines(keepends=True)
    lines[2] = "line three\n"  # several hunks in one file
    lines[20:22] = ["-- a line that starts like a header\n"]
    lines.append("--- another one\n+++ and another\n")
    (repo / "long.txt").write_text("".join(lines))
    (repo / "gone.txt").unlink()
    (repo / "pkg").mkdir()
    (repo / "pkg" / "new.py").write_text("def added():\n    return 1\n")
    (repo / "no_newline.txt").write_text("first\nlast changed, still without newline")
    (repo / "gains_newline.txt").write_text("alpha\nbeta\n")
    (repo / "loses_newline.txt").write_text("alpha\nbeta")
    (repo / "script.sh").chmod(0o755)
    (repo / "old name.py").rename(repo / "new name.py")
    (repo / "new name.py").write_text((repo / "new name.py").read_text().replace("value_5 = 5", "value_5 = 55"))
    (repo / "moved.txt").rename(repo / "renamed.txt")
    (repo / "empty_soon.txt").write_text("")
    (repo / "empty_new.txt").write_text("")


def file_diffs(diff: str) -> list[str]:
    return sorted(re.split(r"(?m)^(?=diff --git )", diff))


@pytest.mark.parametrize("rename_detection", ["-M", "--no-renames"])
def test_reverse_diff_undoes_git_diff_and_matches_git_diff_R(tmp_path, rename_detection):
    repo = make_repo(tmp_path, BEFORE)
    before_tree = git(repo, "write-tree").strip()
    change_everything(repo)
    git(repo, "add", "-A")
    after_tree = git(repo, "write-tree").strip()
    forward = git(repo, "diff", "--cached", rename_detection, "HEAD")
    assert "rename from old name.py" in forward or rename_detection == "--no-renames"
    assert "\\ No newline at end of file" in forward and "deleted file mode" in forward
    reverse = reverse_diff(forward)
    by_git = git(repo, "diff", "--cached", rename_detection, "-R", "HEAD")
    # Textually what git writes, file by file; git orders renamed files by their new names.
    assert file_diffs(reverse) == file_diffs(by_git)
    if rename_detection == "--no-renames":
        assert reverse == by_git
    assert reverse_diff(reverse) == forward
    # Applied to the changed tree, both reverse diffs give back the original tree.
    for patch in (reverse, by_git):
        git(repo, "apply", "--index", input=patch)
        assert git(repo, "write-tree").strip() == before_tree
        git(repo, "apply", "--index", input=forward)
        assert git(repo, "write-tree").strip() == after_tree


def test_reverse_diff_without_index_lines_and_with_crlf(tmp_path):
    repo = make_repo(tmp_path, {"dos.txt": "one\r\ntwo\r\nthree\r\n", "plain.txt": "a\nb\nc\n"})
    (repo / "dos.txt").write_bytes(b"one\r\nTWO\r\nthree\r\n")
    (repo / "plain.txt").write_text("a\nB\nc\nd\n")
    forward = git(repo, "diff")
    # What swebench and SWE-smith datasets often hold: headers with no `index` line.
    forward = "\n".join(line for line in forward.split("\n") if not line.startswith("index "))
    git(repo, "apply", "--check", "-R", input=forward)
    git(repo, "apply", input=reverse_diff(forward))
    assert (repo / "dos.txt").read_bytes() == b"one\r\ntwo\r\nthree\r\n"
    assert (repo / "plain.txt").read_text() == "a\nb\nc\n"


def test_reverse_diff_of_a_plain_unified_diff():
    diff = "--- hello.txt\t2024-01-01\n+++ hello.txt\t2024-01-02\n@@ -1 +1,2 @@\n-hi\n+hello\n+world\n"
    assert reverse_diff(diff) == (
        "--- hello.txt\t2024-01-02\n+++ hello.txt\t2024-01-01\n@@ -1,2 +1 @@\n-hello\n-world\n+hi\n")


def test_reverse_diff_refuses_what_text_cannot_reverse():
    with pytest.raises(DiffError, match="binary"):
        reverse_diff("diff --git a/x.png b/x.png\nindex 1..2 100644\nGIT binary patch\nliteral 3\n")
    with pytest.raises(DiffError, match="copy"):
        reverse_diff("diff --git a/x b/y\nsimilarity index 100%\ncopy from x\ncopy to y\n")
