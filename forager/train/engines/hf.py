"""The `hf` policy as a trainable engine, in this process: sample, take new weights in place, sample on.

All the sampling is `forager.policies.hf.HFPolicy`'s. Its lock covers one whole generation and the
weight copy, so an update waits for the generation in flight and the next one runs on the new weights;
the copy goes into the existing parameters (`copy_` under no_grad), so nothing is reloaded from disk.
"""

from __future__ import annotations

from typing import Any

from forager.core import Message, PolicyOutput, Task
from forager.policies.hf import HFPolicy
from forager.train.engines import EngineError, NamedTensors


class HFEngine(HFPolicy):
    """A transformers causal LM sampling in this process, whose weights the learner replaces between generations."""

    name = "hf"

    def __init__(self, model: str, **options: Any) -> None:
        """`model`: a directory, hub id or known name (`smollm2-135m-instruct`); `options`: HFPolicy's."""
        super().__init__(model, **options)
        self.closed = False

    @property
    def version(self) -> int:
        return self.policy_version

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        self._check_open()
        return super().act(messages, task=task, prefix_token_ids=prefix_token_ids, max_tokens=max_tokens, tools=tools)

    def update_weights(self, weights: NamedTensors, policy_version: int) -> None:
        self._check_open()
        super().update_weights(weights, policy_version)

    def close(self) -> None:
        """Drop the model (its memory is freed once no caller holds it); idempotent."""
        with self._lock:  # never under a generation in flight
            self.closed = True
            self.lm = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "engine": "in-process"}

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError(f"the hf engine for {self.model} is closed")

    def __enter__(self) -> HFEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
