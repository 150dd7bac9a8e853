"""SWE-bench evaluations: the instances, their environments, and grading predictions resumably.

- `load_instances`: swebench rows from a dataset alias (`verified`, `lite`, `full`), a hub name, or a
  local JSON/JSONL/Parquet file or dataset directory, narrowed by ids, a regex and a slice.
- `instance_tasks`: each row as a Task with an environment: the official image by its swebench name
  (`registry=True`; SWE-Gym's rows by their `xingyaoww/` names), or an image Forager builds offline
  from swebench's spec for the repo and version and a local mirror of the repository
  (`forager.eval.instances`). A row that cannot get one is an error of its own.
- `grade_predictions`: every prediction graded the official way (`forager.eval.swebench`), `workers`
  at a time, each result appended to `results.SAMPLE.jsonl` as it comes and its log kept under
  `logs/SAMPLE/`, so that the same command goes on where a killed one stopped.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forager.core import ForagerError, Task
from forager.eval.swebench import DEFAULT_TIMEOUT, InstanceResult, grade_prediction
from forager.runtime.registry import open_runtime
from forager.tasks.formats import swebench_image_name, task_from_record
from forager.tasks.store import read_records

DATASETS = {
    "verified": "princeton-nlp/SWE-bench_Verified",
    "lite": "princeton-nlp/SWE-bench_Lite",
    "full": "princeton-nlp/SWE-bench",
    "gym": "SWE-Gym/SWE-Gym",
}
"""Short names of the hub datasets `--dataset` takes."""
REQUIRED = ("instance_id", "repo", "base_commit", "patch", "test_patch", "FAIL_TO_PASS", "PASS_TO_PASS")


def load_instances(dataset: str, *, split: str = "test", instance_ids: Iterable[str] = (), pattern: str | None = None,
                   window: str | None = None) -> list[dict[str, Any]]:
    """The rows of `dataset` (an alias, a hub name, a file or a folder) kept by ids, a regex and a `START:END` slice."""
    rows = read_records(DATASETS.get(dataset, dataset), split)
    for number, row in enumerate(rows, 1):
        if not row.get("instance_id"):
            raise ForagerError(f"{dataset}: row {number} has no instance_id")
    wanted = set(instance_ids)
    if wanted:
        missing = wanted - {row["instance_id"] for row in rows}
        if missing:
            raise ForagerError(f"{dataset} has no instance(s) {', '.join(sorted(missing)[:5])}")
        rows = [row for row in rows if row["instance_id"] in wanted]
    if pattern:
        rows = [row for row in rows if re.search(pattern, row["instance_id"])]
    if window:
        start, _, end = window.partition(":")
        rows = rows[int(start) if start else None:int(end) if end else None]
    return rows


def registry_image(row: Mapping[str, Any], dataset: str = "") -> str:
    """The official image of a row: its own `image`/`image_name`, SWE-Gym's names, else swebench's."""
    if row.get("image") or row.get("image_name"):
        return str(row.get("image") or row.get("image_name"))
    if "gym" in dataset.lower():  # SWE-Gym's images: `__` spelled `_s_`, in the xingyaoww namespace
        return f"xingyaoww/sweb.eval.x86_64.{row['instance_id'].replace('__', '_s_')}:latest".lower()
    return swebench_image_name(row["instance_id"])


@dataclass
class Environments:
    """How instances get their environments."""

    registry: bool = False
    """Use the official images by name (pulled where a registry answers)."""
    repos: Path | None = None
    """Mirrors of the repositories (`owner__name`: bare repos, work trees or bundles), to build images offline."""
    specs: str | None = None
    """A spec file (JSON/YAML, or swebench 4's constants/python.py or wheel); default: the installed swebench's."""
    workers: int = 2
    dataset: str = ""


def instance_tasks(rows: list[dict[str, Any]], envs: Environments,
                   on_build: Callable[[str, str], None] | None = None) -> tuple[dict[str, Task], dict[str, str]]:
    """(Task by instance id, error by instance id): every row with an environment, or the reason it has none."""
    tasks: dict[str, Task] = {}
    errors: dict[str, str] = {}
    usable = []
    for row in rows:
        missing = [key for key in REQUIRED if row.get(key) in (None, "")]
        if missing:
            errors[row["instance_id"]] = f"the row has no {', '.join(missing)}"
        else:
            usable.append(row)
    if envs.registry:
        for row in usable:
            try:
                tasks[row["instance_id"]] = task_from_record(row, image=registry_image(row, envs.dataset),
                                                             format="swebench")
            except (ValueError, ForagerError) as err:
                errors[row["instance_id"]] = str(err)
        return tasks, errors
    if envs.repos is None:
        raise ForagerError("no environments: give --repos DIR (mirrors to build instance images from, offline) "
                           "or --registry-images (the official images)")
    from forager.eval.instances import build_instance_images, instance_task
    from forager.eval.specs import load_specs

    specs = load_specs(envs.specs)
    built = build_instance_images(usable, specs, envs.repos, workers=envs.workers, on_progress=on_build)
    for row, image in zip(usable, built):
        if image.error or not image.tag:
            errors[row["instance_id"]] = str(image.error or "no image was built")
            continue
        tasks[row["instance_id"]] = instance_task(row, specs.get(row["repo"], str(row.get("version"))), image.tag)
    return tasks, errors


def grade_predictions(
    tasks: Mapping[str, Task], predictions: list[dict[str, Any]], out: Path, *, sample: int = 0, workers: int = 2,
    errors: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
    on_result: Callable[[InstanceResult], None] | None = None,
) -> list[InstanceResult]:
    """Every prediction's result, graded now or read from `out/results.SAMPLE.jsonl` (see the module docstring)."""
    path = out / f"results.{sample}.jsonl"
    done = {r.instance_id: r for r in read_results(path)}
    logs = out / "logs" / str(sample)
    logs.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def record(result: InstanceResult) -> InstanceResult:
        with lock, path.open("a") as handle:
            handle.write(json.dumps(result.to_dict()) + "\n")
            handle.flush()
        if on_result:
            on_result(result)
        return result

    def grade(prediction: dict[str, Any]) -> InstanceResult:
        instance_id = str(prediction["instance_id"])
        task = tasks.get(instance_id)
        if task is None:
            why = (errors or {}).get(instance_id) or "the instance is not in the dataset"
            return record(InstanceResult(instance_id, sample, error=why))
        result = grade_prediction(task, prediction.get("model_patch"), functools.partial(open_runtime, kind="docker"),
                                  sample=sample, timeout=timeout)
        if result.log:
            (logs / f"{instance_id}.log").write_text(result.log)
        return record(result)

    pending = [p for p in predictions if str(p["instance_id"]) not in done]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="forager-grade") as pool:
        graded = list(pool.map(grade, pending))
    by_id = {**done, **{r.instance_id: r for r in graded}}
    return [by_id[str(p["instance_id"])] for p in predictions]


def read_results(path: Path) -> list[InstanceResult]:
    """The results a grading wrote so far (a torn last line, from a kill, is left out)."""
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            results.append(InstanceResult(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return results


__all__ = ["DATASETS", "Environments", "grade_predictions", "instance_tasks", "load_instances", "read_results",
           "registry_image"]
