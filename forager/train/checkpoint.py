"""Checkpoints of the learner: saved with torch.distributed.checkpoint (DCP), whole or not at all, resumable.

A checkpoint is a directory `<run_dir>/checkpoints/step-000004/` holding:
  - DCP's files (`.metadata` and one `__<rank>_0.distcp` per rank): the model's and AdamW's state as
    `torch.distributed.checkpoint.state_dict.get_state_dict` gives them, FSDP2-sharded or plain, keyed by
    parameter name, so a checkpoint saved by N ranks loads on M ranks (DCP reshards on load);
  - `rng-rank<r>.json`: each rank's random states (python, numpy when it is imported, torch, CUDA);
  - `forager.json`, written last: the step, the policy version, the world size that saved it and the data
    cursor the caller gave (the loop's task cursor, the trajectory ids already trained on, ...).

Every rank writes into `step-000004.tmp/`; then rank 0 writes `forager.json` and renames the directory.
A directory is complete when its name has no `.tmp` and it holds both `.metadata` and `forager.json`:
`latest` never returns a torn one. Older complete checkpoints beyond `keep_last` and leftover `.tmp`
directories are deleted once a newer one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forager.core import ForagerError
from forager.files import atomic_write_text

if TYPE_CHECKING:
    from forager.train.learner import Learner

__all__ = ["CheckpointError", "Restored", "save", "load", "latest", "complete_checkpoints", "checkpoint_path"]

CHECKPOINTS = "checkpoints"
MANIFEST = "forager.json"
DCP_METADATA = ".metadata"
FORMAT = 1
HF_DIR = "hf"
"""The final weights in the transformers layout (`checkpoint.save_hf`), beside `checkpoints/`."""
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(ForagerError):
    """A checkpoint that cannot be written or read; the message says which and what to do."""


@dataclass(frozen=True)
class Restored:
    """What `load` brought back besides the weights and the optimizer state."""

    path: Path
    step: int
    """Optimizer steps taken when it was saved: the learner continues from here."""
    policy_version: int
    data_cursor: dict[str, Any] = field(default_factory=dict)
    """The caller's cursor as JSON gives it back (a set saved there comes back as a sorted list)."""
    saved_world_size: int = 1
    rng_restored: bool = False
    """False when the checkpoint was saved by a different number of ranks: this rank's random states
    were not in it, and the current ones were kept."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def save(learner: Learner, run_dir: str | Path, *, data_cursor: dict[str, Any] | None = None,
         keep_last: int = 2, step: int | None = None) -> Path:
    """Save the learner at its current step (every rank calls this together); the complete checkpoint's path.

    `step`: the caller's step to name it by (the loop's, which counts steps the learner skipped), else the
    learner's optimizer steps; the learner's own count is kept in the manifest either way."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if keep_last < 1:
        raise CheckpointError(f"keep_last must be at least 1, got {keep_last}")
    cursor = _cursor_json(data_cursor or {})
    final = checkpoint_path(run_dir, learner.step_count if step is None else step)
    staging = final.with_name(final.name + ".tmp")
    if learner.rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # a torn save of the same step before a crash
        staging.mkdir(parents=True)
    _barrier(learner)
    model_state, optimizer_state = get_state_dict(learner.model, learner.optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(staging))
    atomic_write_text(staging / f"rng-rank{learner.rank}.json", json.dumps(_rng_state()))
    _barrier(learner)
    if learner.rank == 0:
        manifest = {"format": FORMAT, "step": learner.step_count if step is None else step,
                    "learner_step": learner.step_count, "policy_version": learner.policy_version,
                    "world_size": learner.world_size, "saved_at": time.time(), "data_cursor": json.loads(cursor)}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
        if final.exists():  # the same step saved again after a resume: the new one replaces it
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(final.parent)
        _prune(Path(run_dir), keep_last)
    _barrier(learner)
    return final


def save_hf(learner: Learner, run_dir: str | Path, model_path: str | Path) -> Path:
    """The learner's weights in the transformers layout at `run_dir/hf` (config, safetensors, tokenizer), for
    `forager collect --policy hf`, vLLM and `from_pretrained` (every rank calls this together: the full weights
    are gathered from the shards; rank 0 writes). A previous `hf/` is replaced only once the new one is whole."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    full = learner.full_state_dict()
    final = Path(run_dir) / HF_DIR
    if learner.rank == 0:
        staging = final.with_name(HF_DIR + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        config = AutoConfig.from_pretrained(str(model_path))
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(full, strict=True)
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(str(model_path)).save_pretrained(staging)
        atomic_write_text(staging / "forager-policy.json", json.dumps(
            {"policy_version": learner.policy_version, "learner_step": learner.step_count, "base_model": str(model_path)}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    _barrier(learner)
    return final


def load(learner: Learner, path: str | Path) -> Restored:
    """Restore a complete checkpoint into `learner` (FSDP2-sharded or plain; every rank calls this together)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    manifest = _manifest(path)
    if manifest is None:
        raise CheckpointError(f"{path} is not a complete checkpoint (it needs {DCP_METADATA} and {MANIFEST}); "
                              "use `latest(run_dir)` to find the newest complete one")
    model_state, optimizer_state = get_state_dict(learner.model, learner.optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(path))
    except Exception as err:  # DCP raises CheckpointException, RuntimeError, KeyError for a model that does not fit
        raise CheckpointError(f"cannot load {path} into this learner (another model or optimizer?): {err}") from err
    set_state_dict(learner.model, learner.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])
    learner.step_count = int(manifest.get("learner_step", manifest["step"]))
    learner.policy_version = int(manifest["policy_version"])
    saved_world = int(manifest.get("world_size", 1))
    rng_file = path / f"rng-rank{learner.rank}.json"
    restored_rng = saved_world == learner.world_size and rng_file.exists()
    if restored_rng:
        _set_rng_state(json.loads(rng_file.read_text()))
    return Restored(path, learner.step_count, learner.policy_version, manifest.get("data_cursor", {}), saved_world,
                    restored_rng)


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under `run_dir`, oldest first; torn ones are left out."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        manifest = _manifest(child) if match and child.is_dir() else None
        if manifest is not None and manifest.get("step") == int(match.group(1)):  # type: ignore[union-attr]
            found.append((int(manifest["step"]), child))
    return sorted(found)


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `run_dir`, or None when there is none."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def _manifest(path: Path) -> dict[str, Any] | None:
    """The checkpoint's manifest when the directory is complete, else None."""
    if not (path / DCP_METADATA).is_file():
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("step"), int) else None


def _prune(run_dir: Path, keep_last: int) -> None:
    """Delete complete checkpoints older than the newest `keep_last`, and torn `.tmp` directories."""
    for _, path in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in (run_dir / CHECKPOINTS).glob("step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def _cursor_json(cursor: dict[str, Any]) -> str:
    """The cursor as JSON text (sets and tuples become sorted lists and lists); a clear error when it is not JSON."""
    def convert(value: Any) -> Any:
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, tuple):
            return list(value)
        raise TypeError(f"{type(value).__name__} is not JSON")

    try:
        return json.dumps(cursor, default=convert)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the data cursor must be JSON (dicts, lists, sets, strings, numbers): {err}") from err


def _rng_state() -> dict[str, Any]:
    """This process's random states as JSON: python's, numpy's when numpy is in use, torch's (CPU, CUDA)."""
    import torch

    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state().tolist()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [kind, keys.tolist(), pos, has_gauss, cached]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "numpy" in state:
        import numpy

        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _single_process_quiet() -> contextlib.AbstractContextManager[Any]:
    """Without a process group DCP works in this process alone, as meant here: its warning that says so is dropped."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
    return stack


def _barrier(learner: Learner) -> None:
    if learner.distributed:
        import torch.distributed as dist

        dist.barrier()


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (the directory entry itself is flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
