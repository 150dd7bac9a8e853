"""Task files: Forager's JSONL, swebench and SWE-smith instances, Parquet, and Hugging Face datasets.

Every source becomes a list of records (dicts), and every record a `Task`:

- Forager's own format is the `Task` model itself, strict (unknown keys are an error).
- swebench instances (SWE-bench, Verified, SWE-Gym, and swebench 5 datasets, whose rows also carry
  `image`, `log_parser`, `eval_type` and `eval_script`) become `issue-fix` tasks in `/testbed`.
- SWE-smith instances become `mutate-fix` tasks: their `patch` plants the bug, so its reverse is the fix.

Keys a mapping does not use are kept in `Task.metadata` under their own names, never dropped, so
`to_swebench_instance` can give back what came in.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

from forager.core import ForagerError, Task
from forager.files import atomic_output

TaskFormat = Literal["auto", "forager", "swebench", "swe-smith"]
FORMATS: tuple[str, ...] = get_args(TaskFormat)

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
_PATH_SUFFIXES = (".json", ".jsonl", ".parquet")
# Keys only Forager's format has: a record with one is never read as another format.
_FORAGER_ONLY = {"kind", "local_repo", "workdir", "setup_patch", "test_command", "test_timeout"}


class TaskLoadError(ForagerError, ValueError):
    """A task source cannot be read, or a record in it is not a task; the message says where.

    Also a ValueError, which is what `load_tasks` raised before it read more than Forager's format.
    """


def read_records(source: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """The records of a .jsonl, .json or .parquet file, a local dataset directory, or a hub dataset."""
    return [record for _, record in _read_located(source, split)]


def load_tasks(
    source: str | Path, split: str = "test", format: TaskFormat = "auto", image: str | None = None
) -> list[Task]:
    """Read tasks from any source `read_records` accepts; errors name the line or row."""
    _check_format(format)
    tasks = []
    for where, record in _read_located(source, split):
        try:
            tasks.append(task_from_record(record, image=image, format=format))
        except ValueError as err:  # pydantic's ValidationError is one
            what = "neither a Forager task nor a swebench or SWE-smith instance" if format == "auto" else format
            raise TaskLoadError(f"{where}: not a valid task ({what}): {err}") from err
    return tasks


def write_tasks(tasks: Iterable[Task], path: str | Path) -> Path:
    """Write tasks as Forager JSONL, atomically: readers see the old file or the new one, never half."""
    with atomic_output(path) as out:
        for task in tasks:
            out.write(task.model_dump_json() + "\n")
    return Path(path)


def task_from_record(record: dict[str, Any], *, image: str | None = None, format: TaskFormat = "auto") -> Task:
    """One record as a Task; `image` replaces the image the record names or implies."""
    _check_format(format)
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


def reverse_diff(diff: str) -> str:
    """Reverse a unified (git) diff textually, as `git diff -R` would have written it.

    Swaps file headers, hunk ranges and +/- lines (removals first, each `\\ No newline at end of file`
    kept after its line), new/deleted file modes, old/new modes, index ids and renames. Copies and
    binary patches cannot be reversed without the files and raise TaskLoadError.
    """
    lines = diff.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            end = i + 1
            while end < len(lines) and lines[end].startswith(_EXTENDED_HEADERS):
                end += 1
            out += _reverse_git_header(lines[i:end])
            i = end
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            out += ["--- " + lines[i + 1][4:], "+++ " + line[4:]]
            i += 2
        elif hunk := _HUNK_HEADER.match(line):
            old, new, context = hunk.groups()
            end = _hunk_end(lines, i + 1, _range_len(old), _range_len(new))
            out += [f"@@ -{new} +{old} @@{context}", *_reverse_hunk_body(lines[i + 1 : end])]
            i = end
        elif line.startswith("GIT binary patch"):
            raise TaskLoadError("cannot reverse a binary patch textually: produce the reverse with `git diff -R`")
        else:
            out.append(line)
            i += 1
    return "\n".join(out)


# Reading sources.


def _read_located(source: str | Path, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Records with where each came from (`file:line`, `file row n`), for error messages."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _numbered(f"{path} ({split})", _load_dataset(str(path), split, local=True))
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return _numbered(str(path), _read_parquet(path))
        return _read_json_or_jsonl(path)
    if isinstance(source, Path) or _looks_like_path(source):
        raise TaskLoadError(f"{source}: no such file or directory")
    return _numbered(f"{source} ({split})", _load_dataset(source, split, local=False))


def _looks_like_path(source: str) -> bool:
    # `owner/name` is a hub id, so one `/` alone does not make a path.
    return (
        source.lower().endswith(_PATH_SUFFIXES)
        or source.startswith((".", "~", os.sep))
        or source.count("/") > 1
        or (os.altsep is not None and os.altsep in source)
        or "\\" in source
    )


def _numbered(where: str, records: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    located = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TaskLoadError(f"{where} row {index}: expected an object, got {type(record).__name__}")
        located.append((f"{where} row {index}", record))
    return located


def _read_json_or_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A JSON list or object, or JSONL (one object a line) whatever the file is called, as before."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if text.lstrip().startswith("["):
                raise TaskLoadError(f"{path}: not valid JSON: {err}") from err
        else:
            return _numbered(str(path), data if isinstance(data, list) else [data])
    located = []
    # split("\n"), not splitlines(): U+2028 and form feeds may stand raw inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskLoadError(f"{path}:{lineno}: not valid JSON: {err}") from err
        if not isinstance(record, dict):
            raise TaskLoadError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        located.append((f"{path}:{lineno}", record))
    return located


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise TaskLoadError(f"{path}: reading Parquet needs pyarrow: pip install 'forager[eval]'") from err
    return pq.read_table(path).to_pylist()


def _load_dataset(name: str, split: str, *, local: bool) -> list[dict[str, Any]]:
    """A hub dataset or a local dataset directory, read the one way `datasets` reads both."""
    try:
        import datasets
    except ImportError as err:
        raise TaskLoadError(
            f"reading the dataset {name!r} needs the `datasets` package: pip install 'forager[eval]'"
        ) from err
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot read it"
        if local:
            raise TaskLoadError(f"{name}: cannot read split {split!r} of this dataset directory: {err}") from err
        raise TaskLoadError(
            f"cannot load the dataset {name!r} (split {split!r}) from the Hugging Face hub, and no such local "
            f"path exists: {err}. The hub may be unreachable from here: pass a local .jsonl, .json or .parquet "
            "file, or a dataset directory, instead"
        ) from err
    return [dict(row) for row in dataset]


# Mapping records to tasks.


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise TaskLoadError(f"unknown task format {format!r}: use one of {', '.join(FORMATS)}")


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


# Reversing diffs.

_HUNK_HEADER = re.compile(r"@@ -(\d+(?:,\d+)?) \+(\d+(?:,\d+)?) @@(.*)", re.S)
_EXTENDED_HEADERS = (
    "old mode ", "new mode ", "deleted file mode ", "new file mode ", "similarity index ",
    "dissimilarity index ", "rename from ", "rename to ", "copy from ", "copy to ", "index ",
)


def _range_len(hunk_range: str) -> int:
    return int(hunk_range.split(",")[1]) if "," in hunk_range else 1


def _hunk_end(lines: list[str], i: int, old: int, new: int) -> int:
    """The index after a hunk's body, counted from its header's line counts."""
    while i < len(lines) and (old > 0 or new > 0):
        first = lines[i][:1]
        if first in (" ", ""):  # some tools strip the space of an empty context line
            old, new = old - 1, new - 1
        elif first == "-":
            old -= 1
        elif first == "+":
            new -= 1
        elif first != "\\":
            break  # malformed: let `git apply` report it
        i += 1
    if i < len(lines) and lines[i].startswith("\\"):
        i += 1  # `\ No newline at end of file` after the hunk's last line
    return i


def _reverse_hunk_body(body: list[str]) -> list[str]:
    """Swap +/- and put each run's removals first; a `\\` line stays after the line it qualifies."""
    groups: list[list[str]] = []
    for line in body:
        if line.startswith("\\") and groups:
            groups[-1].append(line)
        else:
            groups.append([line])
    out: list[str] = []
    removed: list[list[str]] = []
    added: list[list[str]] = []
    for group in groups:
        sign = group[0][:1]
        if sign == "+":
            removed.append(["-" + group[0][1:], *group[1:]])
        elif sign == "-":
            added.append(["+" + group[0][1:], *group[1:]])
        else:
            out += [line for g in (*removed, *added, group) for line in g]
            removed, added = [], []
    out += [line for g in (*removed, *added) for line in g]
    return out


def _reverse_git_header(block: list[str]) -> list[str]:
    head, *extended = block
    values = {}
    for line in extended:
        for key in ("old mode ", "new mode ", "rename from ", "rename to "):
            if line.startswith(key):
                values[key] = line[len(key) :]
    swapped = {
        "old mode ": "new mode ", "new mode ": "old mode ", "rename from ": "rename to ", "rename to ": "rename from ",
    }
    out = [_swap_git_names(head, values.get("rename from "), values.get("rename to "))]
    for line in extended:
        if line.startswith(("copy from ", "copy to ")):
            raise TaskLoadError("cannot reverse a copy textually: produce the reverse with `git diff -R`")
        key = next((k for k in swapped if line.startswith(k)), None)
        if key is not None:
            out.append(key + values[swapped[key]])
        elif line.startswith("new file mode "):
            out.append("deleted file mode " + line.removeprefix("new file mode "))
        elif line.startswith("deleted file mode "):
            out.append("new file mode " + line.removeprefix("deleted file mode "))
        elif index := re.fullmatch(r"index (\w+)\.\.(\w+)(.*)", line, flags=re.S):
            out.append(f"index {index[2]}..{index[1]}{index[3]}")
        else:
            out.append(line)
    return out


def _swap_git_names(head: str, old: str | None, new: str | None) -> str:
    """`diff --git a/x b/y` as `diff --git b/y a/x`, finding where the names split even when they hold spaces."""
    rest = head.removeprefix("diff --git ")
    for k, char in enumerate(rest):
        if char != " ":
            continue
        left, right = rest[:k], rest[k + 1 :]
        if old is None or new is None:
            split_here = left[2:] == right[2:]  # one file: the names differ only in their a/ b/ prefixes
        else:
            split_here = left.strip('"').endswith(old.strip('"')) and right.strip('"').endswith(new.strip('"'))
        if split_here:
            return f"diff --git {right} {left}"
    return head
