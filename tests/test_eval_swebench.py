"""SWE-bench grading the official way: eval scripts, predictions, reports, and verdicts that swebench's own
`get_eval_report` agrees with, on instances the project makes itself."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from forager.core import ForagerError, Task
from forager.eval.predictions import make_report, read_predictions, write_predictions
from forager.eval.runs import grade_predictions, load_instances, registry_image
from forager.eval.swebench import InstanceResult, eval_script, grade_prediction, directives_of
from forager.images.sample import sample_repo, sample_tasks
from forager.runtime.registry import open_runtime
from forager.testing.swebench_instances import make_sample_instances
from tests.conftest import needs_docker

TEST_PATCH = ("diff --git a/tests/test_a.py b/tests/test_a.py\n--- a/tests/test_a.py\n+++ b/tests/test_a.py\n"
              "@@ -1 +1,2 @@\n x = 1\n+y = 2\n"
              "diff --git a/tests/data.json b/tests/data.json\nnew file mode 100644\n--- /dev/null\n"
              "+++ b/tests/data.json\n@@ -0,0 +1 @@\n+{}\n")


def task(**fields) -> Task:
    values = {"instance_id": "o__r-1", "repo": "o/r", "base_commit": "abc123", "problem_statement": "p",
              "test_patch": TEST_PATCH, "test_command": "pytest -rA", "log_parser": "parse_log_pytest", "image": "i"}
    return Task(**{**values, **fields})


def test_the_eval_script_follows_swebench_for_forager_images_and_official_ones() -> None:
    ours = eval_script(task(workdir="/repo", metadata={"swebench_spec": {"eval_commands": ["export X=1"]}}))
    assert ours.startswith("#!/bin/bash\nset -uxo pipefail\n") and "conda" not in ours
    assert "export X=1" in ours and "/forager/reinstall" in ours
    assert ours.count("git checkout abc123 tests/test_a.py") == 2  # only files that exist before the patch
    assert "pytest -rA tests/test_a.py\n" in ours  # data files are not test directives
    assert ours.index(": '>>>>> Start Test Output'") < ours.index("pytest -rA tests") < ours.index(": '>>>>> End Test Output'")
    official = eval_script(task(workdir="/testbed", metadata={"swebench_spec": {"install": "python -m pip install -e ."}}))
    assert "conda activate testbed" in official and "python -m pip install -e ." in official
    django = task(repo="django/django", test_patch=TEST_PATCH.replace("tests/test_a.py", "tests/auth_tests/test_x.py"))
    assert directives_of(django) == ["auth_tests.test_x"]


def test_predictions_in_every_shape_swebench_accepts_and_bad_ones(tmp_path: Path) -> None:
    rows = [{"instance_id": "a", "model_name_or_path": "m", "model_patch": "x"},
            {"instance_id": "b", "model_name_or_path": "m", "model_patch": ""}]
    as_jsonl = write_predictions(tmp_path / "p.jsonl", rows)
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "dict.json").write_text(json.dumps({r["instance_id"]: r for r in rows}))
    for path in (as_jsonl, tmp_path / "list.json", tmp_path / "dict.json"):
        assert [p["instance_id"] for p in read_predictions(path)] == ["a", "b"]
    (tmp_path / "twice.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ForagerError, match="predicted twice"):
        read_predictions(tmp_path / "twice.jsonl")
    (tmp_path / "noid.jsonl").write_text('{"model_patch": "x"}\n')
    with pytest.raises(ForagerError, match="no instance_id"):
        read_predictions(tmp_path / "noid.jsonl")


def test_the_report_has_swebench_shape_and_arithmetic() -> None:
    results = [InstanceResult("a", status="resolved", resolved=True, swebench_resolved=True),
               InstanceResult("b", status="unresolved", swebench_resolved=False),
               InstanceResult("c", status="empty_patch"),
               InstanceResult("d", status="error", error="Patch Apply Failed"),
               InstanceResult("zz", status="error", error="the instance is not in the dataset")]
    preds = [{"instance_id": i} for i in ("a", "b", "c", "d", "zz")]
    report = make_report(["a", "b", "c", "d", "e"], preds, results)
    assert (report["total_instances"], report["submitted_instances"], report["completed_instances"],
            report["resolved_instances"], report["unresolved_instances"], report["empty_patch_instances"],
            report["error_instances"]) == (5, 5, 2, 1, 1, 1, 2)
    assert report["resolved_ids"] == ["a"] and report["error_ids"] == ["d", "zz"]
    assert report["incomplete_ids"] == ["c", "d", "e"] and report["swebench_agrees"] == 2
    assert report["schema_version"] == 2 and report["errors"]["zz"].endswith("not in the dataset")


def test_dataset_rows_are_narrowed_by_ids_regex_and_slice(tmp_path: Path) -> None:
    made = make_sample_instances(tmp_path)
    ids = [row["instance_id"] for row in made.rows]
    assert [r["instance_id"] for r in load_instances(str(made.instances))] == ids
    assert [r["instance_id"] for r in load_instances(str(made.instances), pattern="bump")] == [
        "forager__semverkit-bump-major-no-reset"]
    assert len(load_instances(str(made.instances), window="1:3")) == 2
    with pytest.raises(ForagerError, match="no instance"):
        load_instances(str(made.instances), instance_ids=["nope"])
    assert registry_image({"instance_id": "django__django-1"}) == "swebench/sweb.eval.x86_64.django_1776_django-1:latest"
    assert registry_image({"instance_id": "getmoto__moto-7"}, "SWE-Gym/SWE-Gym") == \
        "xingyaoww/sweb.eval.x86_64.getmoto_s_moto-7:latest"


@pytest.fixture(scope="module")
def sample_instance(tmp_path_factory) -> Task:
    """An instance graded in the sample image: its commit is the fixed library, so a patch that plants the bug
    is what fails the issue's tests, and one that leaves the library alone resolves it."""
    row = make_sample_instances(tmp_path_factory.mktemp("si"), ["prerelease-numeric-order"]).rows[0]
    return Task(instance_id=row["instance_id"], repo=row["repo"], image="forager/sample:latest", workdir="/repo",
                base_commit=sample_repo().commit, problem_statement="p", test_patch=row["test_patch"],
                patch=row["patch"], FAIL_TO_PASS=json.loads(row["FAIL_TO_PASS"]),
                PASS_TO_PASS=json.loads(row["PASS_TO_PASS"]), version="1.0", log_parser="parse_log_pytest",
                test_command="python -m pytest -rA -p no:cacheprovider")


README_EDIT = ("diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n {first}\n"
               "+A line that changes nothing the tests see.\n")


@needs_docker
def test_verdicts_agree_with_swebench_and_bad_patches_are_errors(sample_instance: Task, tmp_path: Path) -> None:
    first = (sample_repo().path / "README.md").read_text().splitlines()[0]
    bug = next(t for t in sample_tasks() if t.instance_id.endswith("prerelease-numeric-order")).setup_patch
    preds = [{"instance_id": sample_instance.instance_id, "model_patch": README_EDIT.format(first=first)}]
    opener = functools.partial(open_runtime, kind="docker")
    fine = grade_prediction(sample_instance, preds[0]["model_patch"], opener)
    assert (fine.status, fine.resolved, fine.swebench_resolved, fine.patch_applied) == ("resolved", True, True, True)
    assert ">>>>> Start Test Output" in fine.log and "PASSED tests/test_issue" in fine.log
    broken = grade_prediction(sample_instance, bug, opener)
    assert (broken.status, broken.swebench_resolved) == ("unresolved", False)
    assert broken.fail_to_pass["failure"] == sample_instance.FAIL_TO_PASS
    garbage = grade_prediction(sample_instance, "this is not a diff\n", opener)
    assert garbage.status == "error" and "Patch Apply Failed" in (garbage.error or "")
    assert grade_prediction(sample_instance, "", opener).status == "empty_patch"
    # the orchestration: results appended as they come, a second run reads them back instead of grading again
    preds.append({"instance_id": "not__there-1", "model_patch": "x"})
    results = grade_predictions({sample_instance.instance_id: sample_instance}, preds, tmp_path, workers=2)
    assert [r.status for r in results] == ["resolved", "error"]
    assert (tmp_path / "logs" / "0" / f"{sample_instance.instance_id}.log").is_file()
    again = grade_predictions({}, preds, tmp_path)
    assert [r.status for r in again] == ["resolved", "error"]


def test_test_time_scaling_chooses_the_best_score_then_the_majority_patch() -> None:
    from forager.eval.tts import changed_lines, choose

    a = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    a_spaced = a.replace("+x = 2", "+x  =  2")
    b = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-x = 1\n+x = 3\n"
    assert changed_lines(a) == changed_lines(a_spaced) != changed_lines(b)
    assert choose([a, b, a_spaced], [1, 2, 1]) == 1  # the best score wins outright
    assert choose([b, a, a_spaced], [2, 2, 2]) == 1  # a tie goes to the patch two candidates agree on
    assert choose([b, a], [0, 0]) == 0  # no agreement either: the earliest
    assert choose(["", b], [5, 0]) == 1 and choose(["", " "], [0, 0]) is None  # an empty patch is never submitted


# -- the whole path on instances the project makes: images built offline from a mirror and a spec file ------
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_sample_instances(tmp_path_factory.mktemp("instances"), ["prerelease-numeric-order", "bump-major-no-reset"])


def forager_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forager", *map(str, args)], capture_output=True, text=True,
                          timeout=1500)


@needs_docker
def test_forager_eval_swebench_predicts_grades_reports_and_resumes(made, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    command = ["eval", "swebench", "--dataset", made.instances, "--repos", made.repos, "--specs", made.specs,
               "-k", "2", "--tts", "2", "--workers", "2", "--out", out]
    done = forager_cli(*command)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ids = sorted(row["instance_id"] for row in made.rows)
    for k in (0, 1):
        preds = read_predictions(out / f"predictions.{k}.jsonl")
        assert sorted(p["instance_id"] for p in preds) == ids and all(p["model_patch"] for p in preds)
        assert {p["model_name_or_path"] for p in preds} == {"reference"}
        report = json.loads((out / f"report.{k}.json").read_text())
        assert report["resolved_ids"] == ids and report["error_ids"] == [] and report["swebench_agrees"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass_at_k"] == {"pass@1": 1.0, "pass@2": 1.0} and summary["samples_per_task"] == 2
    assert summary["test_time_scaling"]["resolved_rate"] == 1.0 and summary["run"]["collection"]["policy"]
    assert json.loads((out / "report.tts.json").read_text())["resolved_ids"] == ids
    again = forager_cli(*command)
    assert again.returncode == 0 and "+4 from before" in again.stdout, again.stdout[-2000:]


@needs_docker
def test_forager_eval_grade_reports_each_bad_row_and_prediction_on_its_own(made, tmp_path: Path) -> None:
    rows = [dict(row) for row in made.rows]
    gold, other = rows
    rows.append({**other, "instance_id": "forager__semverkit-unknown-version", "version": "9.9"})
    rows.append({key: value for key, value in other.items() if key != "test_patch"} | {"instance_id": "forager__no-tests"})
    rows.append({**other, "instance_id": "forager__no-commit", "base_commit": "0" * 40})
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    preds = [(gold["instance_id"], gold["patch"]), (other["instance_id"], ""),
             ("forager__semverkit-unknown-version", other["patch"]), ("forager__no-tests", other["patch"]),
             ("forager__no-commit", other["patch"]), ("not__in-dataset", "x")]
    predictions = tmp_path / "preds.json"  # a JSON object keyed by instance id, as swebench also takes
    predictions.write_text(json.dumps({i: {"instance_id": i, "model_name_or_path": "them", "model_patch": p}
                                       for i, p in preds}))
    done = forager_cli("eval", "grade", predictions, "--dataset", dataset, "--repos", made.repos, "--specs",
                       made.specs, "--out", tmp_path / "grade")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "grade" / "report.json").read_text())
    assert report["resolved_ids"] == [gold["instance_id"]] and report["empty_patch_ids"] == [other["instance_id"]]
    assert report["error_ids"] == sorted(["forager__semverkit-unknown-version", "forager__no-tests",
                                          "forager__no-commit", "not__in-dataset"])
    errors = report["errors"]
    assert "9.9" in errors["forager__semverkit-unknown-version"] and "test_patch" in errors["forager__no-tests"]
    assert "0" * 12 in errors["forager__no-commit"] and "not in the dataset" in errors["not__in-dataset"]
    assert report["total_instances"] == 5 and report["swebench_agrees"] == 1


@needs_docker
def test_test_time_scaling_submits_the_candidate_that_passes_the_reproduction(made) -> None:
    from forager.eval.runs import Environments, instance_tasks
    from forager.eval.tts import select, testgen_env

    tasks, errors = instance_tasks(made.rows[:1], Environments(repos=made.repos, specs=str(made.specs)))
    task = tasks[made.rows[0]["instance_id"]]
    assert not errors
    wrong = made.rows[1]["patch"]  # another instance's fix: it applies here, and fixes nothing of this issue
    useless = ("diff --git a/tests/test_nothing.py b/tests/test_nothing.py\nnew file mode 100644\n--- /dev/null\n"
               "+++ b/tests/test_nothing.py\n@@ -0,0 +1,2 @@\n+def test_nothing():\n+    assert True\n")
    env = testgen_env()
    try:
        chosen = select(task, [wrong, task.patch or ""], [task.test_patch or "", useless], env)
    finally:
        env.close()
    assert (chosen.scores, chosen.chosen, chosen.reproducing_tests) == ([0, 1], 1, 1)


def test_dataset_aliases_name_the_hub_datasets(monkeypatch) -> None:
    import forager.eval.runs as runs

    asked = []
    monkeypatch.setattr(runs, "read_records", lambda source, split: asked.append((source, split)) or [])
    for alias in ("verified", "lite", "full", "gym", "my-org/my-swe-set"):
        runs.load_instances(alias, split="dev")
    assert asked == [("princeton-nlp/SWE-bench_Verified", "dev"), ("princeton-nlp/SWE-bench_Lite", "dev"),
                     ("princeton-nlp/SWE-bench", "dev"), ("SWE-Gym/SWE-Gym", "dev"), ("my-org/my-swe-set", "dev")]
