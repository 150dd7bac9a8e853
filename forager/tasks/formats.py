"""Other tools' task formats: swebench instances (SWE-bench, Verified, SWE-Gym, swebench 5 rows) and
SWE-smith instances, read into `Task`s and written back.

- swebench instances become `issue-fix` tasks in `/testbed` (swebench 5 rows also carry `image`,
  `log_parser`, `eval_type` and `eval_script`).
- SWE-smith instances become `mutate-fix` tasks: their `patch` plants the bug, so its reverse is the fix.

Keys a mapping does not use are kept in `Task.metadata` under their own names, never dropped, so
`to_swebench_instance` can give back what came in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Literal, get_args

from forager.core import ForagerError, Task
from forager.tasks.diffs import reverse_diff

TaskFormat = Literal["auto", "forager", "swebench", "swe-smith"]
FORMATS: tuple[str, ...] = get_args(TaskFormat)


class TaskLoadError(ForagerError, ValueError):
    """A task source cannot be read, or a record in it is not a task; the message says where.

    Also a ValueError, which is what `load_tasks` raised before it read more than Forager's format.
    """


# swebench's images keep the repository at /testbed in a conda env named `testbed`, and its eval
# scripts activate that env before running the tests (swebench 5.0.2 image_builder/constants).
SWEBENCH_WORKDIR = "/testbed"

CONDA_ACTIVATE = "source /opt/miniconda3/bin/activate && conda activate testbed && "

FALLBACK_TEST_COMMAND = CONDA_ACTIVATE + "pytest -rA"

# swebench 5.0.2 harness/constants: the eval script brackets the test run with these.
START_TEST_OUTPUT = ">>>>> Start Test Output"

END_TEST_OUTPUT = ">>>>> End Test Output"

# The SWE-bench instance schema (swebench 5.0.2 types.SWEbenchInstance), all of them Task fields.
SWEBENCH_FIELDS = (
    "instance_id", "repo", "base_commit", "problem_statement", "hints_text", "created_at", "version",
    "environment_setup_commit", "patch", "test_patch", "FAIL_TO_PASS", "PASS_TO_PASS",
)

_OPTIONAL_TEXT = ("created_at", "version", "environment_setup_commit")

# SWE-smith ids: `owner__repo.<first 8 hex of the commit>.<how the bug was made>`.
_SWE_SMITH_ID = re.compile(r"[^/\s]+__[^/\s]+\.[0-9a-f]{8}\.\S+")

# Keys only Forager's format has: a record with one is never read as another format.
_FORAGER_ONLY = {"kind", "local_repo", "workdir", "setup_patch", "test_command", "test_timeout"}

def task_from_record(record: dict[str, Any], *, image: str | None = None, format: TaskFormat = "auto") -> Task:
    """One record as a Task; `image` replaces the image the record names or implies."""
    check_format(format)
    if format == "forager":
        return Task.model_validate(record if image is None else {**record, "image": image})
    if format == "swebench":
        return _from_swebench(record, image)
    if format == "swe-smith":
        return _from_swe_smith(record, image)
    try:
        # As is, without `image`: a bare SWE-bench record plus an image would pass as a Forager task.
        task = Task.model_validate(record)
        return task if image is None else task.model_copy(update={"image": image})
    except ValueError:
        if _FORAGER_ONLY & record.keys():
            raise  # a Forager task with a mistake, not someone else's format
        if _looks_like_swe_smith(record):
            return _from_swe_smith(record, image)
        if _looks_like_swebench(record):
            return _from_swebench(record, image)
        raise

def swebench_image_name(instance_id: str, namespace: str = "swebench") -> str:
    """The image swebench's harness pulls for an instance.

    As swebench 5.0.2 derives it (task/checks.py `expected_image`, image_builder/image_spec.py
    `ImageSpec.name`): lower case, and `__` written `_1776_`, since Docker Hub forbids dunders.
    """
    return f"{namespace}/sweb.eval.x86_64.{instance_id}:latest".lower().replace("__", "_1776_")

def to_swebench_instance(task: Task) -> dict[str, Any]:
    """The task as a swebench instance, FAIL_TO_PASS and PASS_TO_PASS JSON-encoded as swebench ships them.

    Keys a swebench record brought in (`eval_script`, `log_parser`, `difficulty`, ...) go back out.
    """
    if task.setup_patch:
        raise ForagerError(
            f"task {task.instance_id!r} plants its bug with a setup_patch, which swebench's harness cannot "
            "apply (it runs the image as is): export issue-fix tasks only, or bake the bug into the image"
        )
    instance = {key: value for key, value in task.metadata.items() if key != "test_command_source"}
    instance.update(
        {key: getattr(task, key) for key in SWEBENCH_FIELDS if key not in ("FAIL_TO_PASS", "PASS_TO_PASS")},
        FAIL_TO_PASS=json.dumps(task.FAIL_TO_PASS),
        PASS_TO_PASS=json.dumps(task.PASS_TO_PASS),
    )
    for key in ("patch", "test_patch", *_OPTIONAL_TEXT):
        instance[key] = instance[key] or ""
    if task.image:
        instance["image"] = task.image
    if task.log_parser == "pytest":
        instance.setdefault("log_parser", "parse_log_pytest")
    return instance

def _looks_like_swebench(record: dict[str, Any]) -> bool:
    return (
        {"instance_id", "repo"} <= record.keys()
        and bool({"base_commit", "image_name"} & record.keys())
        and bool({"problem_statement", "patch"} & record.keys())
    )

def _looks_like_swe_smith(record: dict[str, Any]) -> bool:
    return {"instance_id", "patch"} <= record.keys() and (
        "image_name" in record or bool(_SWE_SMITH_ID.fullmatch(str(record["instance_id"])))
    )

def _split_record(record: dict[str, Any], fields: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record's values for `fields` (normalised, nulls left out), and everything else as metadata."""
    rest = dict(record)
    metadata = rest.pop("metadata") if isinstance(record.get("metadata"), dict) else {}
    known = {key: rest.pop(key) for key in fields if key in rest}
    for key in _OPTIONAL_TEXT:
        value = known.get(key)
        if value is not None and not isinstance(value, str):
            # Parquet may hand a timestamp or a number back; the schema says text.
            known[key] = value.isoformat() if hasattr(value, "isoformat") else str(value)
        if known.get(key) == "":
            known[key] = None  # aligned dataset columns fill missing text with ""
    # Nulls are left out: Parquet and `datasets` fill a row's missing columns with them.
    rest = {key: value for key, value in rest.items() if value is not None}
    return {key: value for key, value in known.items() if value is not None}, {**metadata, **rest}

def _require(record: dict[str, Any], keys: Iterable[str], what: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise TaskLoadError(f"not a {what} instance: it has no {', '.join(missing)}")

def _from_swebench(record: dict[str, Any], image: str | None) -> Task:
    _require(record, ("instance_id", "repo", "base_commit"), "swebench")
    fields, metadata = _split_record(record, SWEBENCH_FIELDS)
    record_image = metadata.pop("image", None)  # swebench 5 rows name their image
    if image and record_image and record_image != image:
        metadata["image"] = record_image
    test_command, source = _swebench_test_command(record)
    return Task(
        **fields,
        kind="issue-fix",
        image=image or record_image or swebench_image_name(fields["instance_id"]),
        workdir=SWEBENCH_WORKDIR,
        test_command=test_command,
        log_parser="swebench",
        metadata={**metadata, "test_command_source": source},
    )

def _swebench_test_command(record: dict[str, Any]) -> tuple[str, str]:
    """The command that runs an instance's tests, and where it came from (kept in metadata)."""
    script = record.get("eval_script")
    if script:
        command = _test_command_from_eval_script(script, record.get("test_patch") or "")
        if command:
            return command, "eval_script"
    spec_command = _swebench_spec_test_cmd(record["repo"], record.get("version"))
    if spec_command:
        return CONDA_ACTIVATE + spec_command, "MAP_REPO_VERSION_TO_SPECS"
    return FALLBACK_TEST_COMMAND, "default"

def _test_command_from_eval_script(script: str, test_patch: str) -> str | None:
    """The test run of a swebench 5 eval script, without the test files it appends.

    swebench 5.0.2 ships each instance's eval_script (task/repo.py) in place of swebench 4's
    MAP_REPO_VERSION_TO_SPECS; its test line is `test_cmd` then the test files of the test patch,
    which Forager replaces with test ids.
    """
    lines = script.split("\n")
    start = next((i for i, line in enumerate(lines) if START_TEST_OUTPUT in line), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if END_TEST_OUTPUT in lines[i]), None)
    if end is None:
        return None
    body = [line.strip() for line in lines[start + 1 : end] if line.strip()]
    if not body:
        return None
    words = "; ".join(body).split(" ")  # "; ": the script's lines run one after another, failures or not
    directives = _test_directives(test_patch)
    while len(words) > 1 and words[-1] in directives:
        words.pop()
    command = " ".join(words).rstrip()
    activates = any("conda activate" in line for line in lines[:end])
    return CONDA_ACTIVATE + command if activates and "conda activate" not in command else command

def _test_directives(test_patch: str) -> set[str]:
    """The test files of a test patch, as paths and as Django's dotted labels.

    swebench < 5 (harness/test_spec/python.py get_test_directives) appends these to `test_cmd`.
    """
    directives = set()
    for path in re.findall(r"^diff --git a/.* b/(.*)$", test_patch, flags=re.M):
        label = path.removesuffix(".py").removeprefix("tests/").replace("/", ".")
        directives |= {path, label}
    return directives

def _swebench_spec_test_cmd(repo: str, version: str | None) -> str | None:
    """`test_cmd` from swebench < 5's MAP_REPO_VERSION_TO_SPECS; swebench 5 has no such table."""
    try:
        from swebench.harness import constants
    except ImportError:
        return None
    specs = getattr(constants, "MAP_REPO_VERSION_TO_SPECS", None) or {}
    command = specs.get(repo, {}).get(str(version), {}).get("test_cmd")
    if isinstance(command, list):
        return " && ".join(command)
    return command or None

def _from_swe_smith(record: dict[str, Any], image: str | None) -> Task:
    """A SWE-smith instance: its `patch` plants the bug in the image's clean HEAD, so the fix is its reverse."""
    _require(record, ("instance_id", "patch"), "SWE-smith")
    fields, metadata = _split_record(
        record, ("instance_id", "repo", "problem_statement", "hints_text", "created_at", "version",
                 "FAIL_TO_PASS", "PASS_TO_PASS")
    )
    bug = metadata.pop("patch")
    record_image = metadata.pop("image_name", None)
    if image and record_image and record_image != image:
        metadata["image_name"] = record_image
    if not (image or record_image):
        raise TaskLoadError(f"SWE-smith instance {fields['instance_id']!r} has no image_name: pass image=")
    # A `base_commit` in the record stays in metadata: the bug is applied to the image's clean HEAD.
    if not (fields.get("problem_statement") or "").strip():
        fields["problem_statement"] = _placeholder_statement(fields.get("FAIL_TO_PASS"))
    return Task(
        **fields,
        kind="mutate-fix",
        image=image or record_image,
        base_commit="HEAD",
        workdir=SWEBENCH_WORKDIR,
        setup_patch=bug,
        patch=reverse_diff(bug),
        test_command=FALLBACK_TEST_COMMAND,
        log_parser="pytest",
        metadata={**metadata, "test_command_source": "default"},
    )

def _placeholder_statement(failing: list[str] | str | None) -> str:
    failing = failing or []
    if isinstance(failing, str):
        failing = json.loads(failing) if failing.strip() else []
    listed = "\n".join(f"- {test}" for test in failing[:20])
    more = f"\n- ... and {len(failing) - 20} more" if len(failing) > 20 else ""
    return f"A recent change broke these tests; find the bug in the source code and fix it:\n{listed}{more}\n"

def check_format(format: str) -> None:
    if format not in FORMATS:
        raise TaskLoadError(f"unknown task format {format!r}: use one of {', '.join(FORMATS)}")
