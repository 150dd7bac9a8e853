"""SWE-bench predictions and reports, in swebench's own formats.

A predictions file is what `swebench.harness.run_evaluation` takes: JSON lines (or a JSON list, or a
JSON object keyed by instance id) of `{"instance_id", "model_name_or_path", "model_patch"}`. A report
is what it writes: the counts and id lists of `reporting.make_run_report` (schema version 2), here
for one predictions file, so each sample index of an evaluation gets a report of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from forager.core import ForagerError
from forager.eval.swebench import InstanceResult
from forager.files import atomic_write_text

PREDICTION_KEYS = ("instance_id", "model_name_or_path", "model_patch")


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The predictions of a file (read as the task store reads JSON and JSONL, `tasks.store.read_records`);
    a row without an instance id, or one id twice, is a ForagerError naming it."""
    from forager.tasks.store import read_records

    path = Path(path)
    if not path.is_file():
        raise ForagerError(f"no predictions file {path}")
    try:
        rows: list[Any] = read_records(path)
    except ValueError as err:
        raise ForagerError(f"cannot read the predictions {path}: {err}") from err
    if len(rows) == 1 and "instance_id" not in rows[0] and all(isinstance(v, dict) for v in rows[0].values()):
        rows = list(rows[0].values())  # a JSON object keyed by instance id
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("instance_id"):
            raise ForagerError(f"{path}: prediction {number} has no instance_id (expected keys: {', '.join(PREDICTION_KEYS)})")
        if row["instance_id"] in seen:
            raise ForagerError(f"{path}: instance {row['instance_id']} is predicted twice")
        seen.add(row["instance_id"])
    return rows


def write_predictions(path: Path, predictions: Iterable[Mapping[str, Any]]) -> Path:
    """`path` as swebench's JSON lines, written whole or not at all."""
    atomic_write_text(path, "".join(json.dumps({k: p.get(k) for k in PREDICTION_KEYS}) + "\n" for p in predictions))
    return path


def make_report(dataset_ids: Iterable[str], predictions: Iterable[Mapping[str, Any]],
                results: Iterable[InstanceResult]) -> dict[str, Any]:
    """swebench's run report for one predictions file graded into `results`.

    Submitted: the predictions. Empty patch: submitted with nothing to apply. Completed: graded to a
    verdict (resolved or unresolved). Error: submitted and neither completed nor empty (a patch that
    does not apply, an environment that failed, an id not in the dataset). Incomplete: in the dataset,
    not completed.
    """
    dataset = sorted(set(dataset_ids))
    submitted = sorted({str(p["instance_id"]) for p in predictions})
    by_id = {r.instance_id: r for r in results}
    resolved = sorted(i for i, r in by_id.items() if r.status == "resolved")
    unresolved = sorted(i for i, r in by_id.items() if r.status == "unresolved")
    empty = sorted(i for i, r in by_id.items() if r.status == "empty_patch")
    completed = sorted(resolved + unresolved)
    errors = sorted(i for i in submitted if i not in completed and i not in empty)
    return {
        "total_instances": len(dataset), "submitted_instances": len(submitted),
        "completed_instances": len(completed), "resolved_instances": len(resolved),
        "unresolved_instances": len(unresolved), "empty_patch_instances": len(empty),
        "error_instances": len(errors), "completed_ids": completed,
        "incomplete_ids": sorted(set(dataset) - set(completed)), "empty_patch_ids": empty,
        "submitted_ids": submitted, "resolved_ids": resolved, "unresolved_ids": unresolved, "error_ids": errors,
        "errors": {i: by_id[i].error for i in errors if i in by_id and by_id[i].error},
        "swebench_agrees": sum(r.swebench_resolved == r.resolved for r in by_id.values()
                               if r.swebench_resolved is not None and r.status in ("resolved", "unresolved")),
        "schema_version": 2,
    }


def write_report(path: Path, report: Mapping[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(report, indent=4) + "\n")
    return path


__all__ = ["PREDICTION_KEYS", "make_report", "read_predictions", "write_predictions", "write_report"]
