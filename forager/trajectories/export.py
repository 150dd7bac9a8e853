"""An SFT dataset from trajectories: one row per trajectory, its chat messages with a loss weight each.

A row (JSONL line or Parquet row):

    {"id": "<task_id>#<sample>", "task_id", "repo", "kind", "reward", "resolved", "termination",
     "messages": [{"role": "system" | "user" | "assistant" | "tool", "content": str, "weight": 0 | 1}, ...]}

- `weight` is the per-message loss flag. The name follows OpenAI's chat fine-tuning format (a
  `weight` of 0 or 1 on a message) and torchtune's `message_field_training="weight"`; axolotl's
  chat_template datasets read it with `message_field_training: weight`. TRL's SFTTrainer has no
  per-message field (its `assistant_only_loss` trains every assistant turn), so for TRL use the
  token-level fields below or `assistant_only_loss=True` with the default masking.
- When any exported trajectory used function calling, every message also carries `tool_calls`
  (OpenAI form, `function.arguments` a JSON string; null elsewhere) and `tool_call_id`, so a chat
  template can render the calls; text-format (`<tool: NAME>`) trajectories have neither key.
- With `tokens=True` a row also has `input_ids` (the exact tokens of the episode, from
  `Trajectory.token_sequence`) and `assistant_masks` (1 where the loss applies), the names TRL's
  collator reads for pre-tokenized data. A message's token mask is its `weight`; the tokens a
  message holds include the chat template's framing of the messages before it.

Observations and the loss. Assistant messages always have weight 1; the system prompt and the
task prompt (the user messages before the first assistant turn) always 0. An *observation* is a
tool output: a `tool` message, or a `user` message after the first assistant turn. Plain SFT
imitates the agent and masks every observation: that is the default, `mask_observations=1.0`.
CWM's world-modelling mid-training also trained on what the environment answered, with half of
the observations masked: `mask_observations=0.5` gives each observation weight 0 with probability
0.5 and weight 1 otherwise; 0.0 trains on every observation. The draw is seeded per trajectory
(`seed` and the trajectory id), so a row does not change when filters change the others.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, get_args

from forager.core import ForagerError, Termination, Trajectory
from forager.files import atomic_output
from forager.trajectories.store import iter_trajectory_lines

FORMATS = ("jsonl", "parquet")
TERMINATIONS: tuple[str, ...] = get_args(Termination)
_PARQUET_BATCH = 256


class ExportError(ForagerError):
    """The dataset cannot be written as asked; the message says why."""


@dataclass(frozen=True)
class ExportFilter:
    """Which trajectories become rows."""

    resolved_only: bool = False
    min_reward: float | None = None
    """Keep trajectories whose reward is at least this."""
    terminations: frozenset[str] | None = None
    """Keep only trajectories that ended one of these ways (None: any)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.terminations or ()) - set(TERMINATIONS))
        if unknown:
            raise ExportError(f"unknown termination(s) {', '.join(unknown)}; known: {', '.join(TERMINATIONS)}")

    def reject(self, trajectory: Trajectory) -> str | None:
        """Why the trajectory is left out, or None when it is kept."""
        if not any(m.role == "assistant" for m in trajectory.messages):
            return "no assistant turn"
        if self.resolved_only and not trajectory.resolved:
            return "not resolved"
        if self.min_reward is not None and trajectory.reward < self.min_reward:
            return f"reward below {self.min_reward:g}"
        if self.terminations is not None and trajectory.termination not in self.terminations:
            return f"termination {trajectory.termination}"
        return None


def _check_share(mask_observations: float) -> None:
    if not 0.0 <= mask_observations <= 1.0:
        raise ExportError(f"mask_observations is the share of observations masked, in [0, 1], not {mask_observations}")


def is_observation(role: str, after_first_action: bool) -> bool:
    """A tool output: a `tool` message, or a `user` message once the agent has acted."""
    return role == "tool" or (role == "user" and after_first_action)


def message_weights(trajectory: Trajectory, mask_observations: float = 1.0, seed: int = 0) -> list[int]:
    """The loss weight of each message: assistant 1, prompts 0, observations 0 with probability `mask_observations`."""
    _check_share(mask_observations)
    rng = random.Random(f"{seed}\x00{trajectory.trajectory_id}")  # str seeds are stable across processes
    weights = []
    acted = False
    for message in trajectory.messages:
        if message.role == "assistant":
            acted = True
            weights.append(1)
        elif is_observation(message.role, acted):
            weights.append(0 if rng.random() < mask_observations else 1)
        else:
            weights.append(0)
    return weights


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-form tool calls with string arguments, whatever shape they were stored in."""
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        arguments = function.get("arguments", {})
        out.append({"id": call.get("id"), "type": call.get("type", "function"),
                    "function": {"name": str(function.get("name", "")),
                                 "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return out


def export_row(trajectory: Trajectory, mask_observations: float = 1.0, seed: int = 0,
               tokens: bool = False) -> dict[str, Any]:
    """One dataset row (see the module docstring)."""
    weights = message_weights(trajectory, mask_observations, seed)
    messages = []
    for message, weight in zip(trajectory.messages, weights):
        row: dict[str, Any] = {"role": message.role, "content": message.content, "weight": weight}
        if message.tool_calls:
            row["tool_calls"] = _tool_calls(message.tool_calls)
        if message.tool_call_id:
            row["tool_call_id"] = message.tool_call_id
        messages.append(row)
    row = {"id": trajectory.trajectory_id, "task_id": trajectory.task_id, "repo": trajectory.repo,
           "kind": trajectory.kind, "reward": float(trajectory.reward), "resolved": trajectory.resolved,
           "termination": trajectory.termination, "messages": messages}
    if tokens:
        input_ids: list[int] = []
        mask: list[int] = []
        for message, weight in zip(trajectory.messages, weights):
            if message.token_ids is None:
                if message.role == "assistant":
                    raise ExportError(f"{trajectory.trajectory_id}: an assistant turn has no token ids (a text-only "
                                      "policy); export without --tokens")
                continue  # its tokens are held by the last message before the next assistant turn
            input_ids += message.token_ids
            mask += [weight] * len(message.token_ids)
        row["input_ids"] = input_ids
        row["assistant_masks"] = mask
    return row


def export_rows(trajectories: Iterable[Trajectory], mask_observations: float = 1.0, seed: int = 0,
                filter: ExportFilter = ExportFilter(), tokens: bool = False) -> list[dict[str, Any]]:  # noqa: A002
    """The rows of the trajectories that pass the filter, in order."""
    return [export_row(t, mask_observations, seed, tokens) for t in trajectories if filter.reject(t) is None]


def parquet_schema(tool_calls: bool = False, tokens: bool = False):
    """The Parquet schema of the rows: messages are a list of structs."""
    import pyarrow as pa

    message = [("role", pa.string()), ("content", pa.string()), ("weight", pa.int64())]
    if tool_calls:
        function = pa.struct([("name", pa.string()), ("arguments", pa.string())])
        call = pa.struct([("id", pa.string()), ("type", pa.string()), ("function", function)])
        message += [("tool_calls", pa.list_(call)), ("tool_call_id", pa.string())]
    fields = [("id", pa.string()), ("task_id", pa.string()), ("repo", pa.string()), ("kind", pa.string()),
              ("reward", pa.float64()), ("resolved", pa.bool_()), ("termination", pa.string()),
              ("messages", pa.list_(pa.struct(message)))]
    if tokens:
        fields += [("input_ids", pa.list_(pa.int32())), ("assistant_masks", pa.list_(pa.int8()))]
    return pa.schema(fields)


@dataclass
class ExportResult:
    rows: int
    paths: list[Path]
    skipped: dict[str, int] = field(default_factory=dict)
    """Trajectories left out, by reason."""
    observations_trained: int = 0
    observations_masked: int = 0


def export_dataset(
    inputs: Iterable[str | Path],
    out_prefix: str | Path,
    formats: Sequence[str] = FORMATS,
    mask_observations: float = 1.0,
    seed: int = 0,
    filter: ExportFilter = ExportFilter(),  # noqa: A002
    tokens: bool = False,
) -> ExportResult:
    """Write the rows of the trajectories in the inputs to `PREFIX.jsonl` and/or `PREFIX.parquet`.

    Streams: the rows go to a JSONL file first (the output itself, or a scratch file when only
    Parquet is asked for), then the Parquet file is written from it in batches, with a schema that
    has message `tool_calls` only when some trajectory has them. Each output appears atomically.
    """
    formats = _checked_formats(formats)
    _check_share(mask_observations)
    prefix = Path(out_prefix)
    if prefix.suffix in (".jsonl", ".parquet"):
        prefix = prefix.with_suffix("")
    jsonl_path = prefix.with_name(prefix.name + ".jsonl")
    parquet_path = prefix.with_name(prefix.name + ".parquet")
    rows = _RowWriter(list(inputs), filter, mask_observations, seed, tokens)
    paths: list[Path] = []
    if "jsonl" in formats:
        with atomic_output(jsonl_path) as out:
            rows.write(out)
        paths.append(jsonl_path)
    if "parquet" in formats:
        if "jsonl" in formats:
            _write_parquet(jsonl_path, parquet_path, parquet_schema(rows.tool_calls, tokens))
        else:
            parquet_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".export-", dir=parquet_path.parent) as scratch:
                staged = Path(scratch) / "rows.jsonl"
                with staged.open("w", encoding="utf-8") as out:
                    rows.write(out)
                _write_parquet(staged, parquet_path, parquet_schema(rows.tool_calls, tokens))
        paths.append(parquet_path)
    return ExportResult(rows.rows, paths, dict(rows.skipped), rows.weights[1], rows.weights[0])


def _checked_formats(formats: Sequence[str]) -> list[str]:
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if "parquet" in formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError("Parquet output needs pyarrow: pip install 'forager[eval]', or write --format jsonl") \
                from None
    return formats


@dataclass
class _RowWriter:
    """Writes the export rows of the trajectories the filter keeps as JSONL, and counts what it wrote."""

    inputs: list[str | Path]
    filter: ExportFilter
    mask_observations: float
    seed: int
    tokens: bool
    rows: int = 0
    tool_calls: bool = False
    """Whether some message has OpenAI `tool_calls` (the Parquet schema has the column only then)."""
    skipped: Counter[str] = field(default_factory=Counter)
    weights: Counter[int] = field(default_factory=Counter)
    """Observations by loss weight (1 trained, 0 masked)."""

    def write(self, out: IO[str]) -> None:
        for line in iter_trajectory_lines(self.inputs):
            reason = self.filter.reject(line.trajectory)
            if reason is not None:
                self.skipped[reason] += 1
                continue
            try:
                row = export_row(line.trajectory, self.mask_observations, self.seed, self.tokens)
            except ExportError as err:
                raise ExportError(f"{line.path}:{line.lineno}: {err}") from None
            self.tool_calls = self.tool_calls or any("tool_calls" in m or "tool_call_id" in m for m in row["messages"])
            acted = False
            for message in row["messages"]:
                acted = acted or message["role"] == "assistant"
                if is_observation(message["role"], acted):
                    self.weights[message["weight"]] += 1
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.rows += 1


def _batches(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    batch = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _write_parquet(rows_jsonl: Path, out_path: Path, schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_output(out_path, "wb") as out:
        with pq.ParquetWriter(out, schema) as writer:
            wrote = False
            for batch in _batches(rows_jsonl, _PARQUET_BATCH):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                wrote = True
            if not wrote:
                writer.write_table(schema.empty_table())
