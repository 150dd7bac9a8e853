"""Task files: Forager's JSONL, swebench and SWE-smith instances, Parquet, and Hugging Face datasets.

Every source becomes a list of records (dicts), and every record a `Task` (`forager.tasks.formats`):
Forager's own format is the `Task` model itself, strict (unknown keys are an error); swebench and
SWE-smith instances are recognised and converted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forager.core import Task
from forager.files import atomic_output
from forager.tasks.formats import TaskFormat, TaskLoadError, check_format, task_from_record

_PATH_SUFFIXES = (".json", ".jsonl", ".parquet")


def read_records(source: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """The records of a .jsonl, .json or .parquet file, a local dataset directory, or a hub dataset."""
    return [record for _, record in _read_located(source, split)]


def load_tasks(
    source: str | Path, split: str = "test", format: TaskFormat = "auto", image: str | None = None
) -> list[Task]:
    """Read tasks from any source `read_records` accepts; errors name the line or row."""
    check_format(format)
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


# Reversing diffs.


