"""Inference engines the trainer samples from: policies whose weights the learner replaces while they serve.

An `Engine` is a `core.Policy` (the agent loop drives it unchanged, and every `PolicyOutput` carries the
`policy_version` that sampled it) that also takes new weights: `update_weights(named tensors, version)`
swaps them in between two generations, never inside one, so a running episode goes on under the new
weights and each of its assistant turns records the version that sampled it.

- `hf` (`engines.hf.HFEngine`): the `hf` policy in this process; the learner hands it tensors directly.
- `remote` (`engines.remote.RemoteEngine`): the same sampler in a child process, fed by
  `train.sync.WeightBroadcaster` over `torch.distributed` (gloo on the CPU, NCCL on GPUs): the transfer
  path a cluster uses;
- `vllm` (`engines.vllm.VLLMEngine`): vLLM servers (started here or already running) sampled token-in-token-out
  through `/v1/completions`, updated in flight by the same broadcast into a worker extension (`vllm_worker`),
  or from disk, or by CUDA IPC when colocated.

Backends are imported only when built, so importing this package needs no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from forager.core import ForagerError, Message, PolicyOutput, PolicyUnavailable, Task
from forager.loading import load_named

ENGINES = {
    "hf": "forager.train.engines.hf:HFEngine",
    "remote": "forager.train.engines.remote:RemoteEngine",
    "vllm": "forager.train.engines.vllm:VLLMEngine",
}

NamedTensors = Mapping[str, Any] | Iterable[tuple[str, Any]]
"""Weights by state-dict name: a dict, or (name, tensor) pairs such as `Learner.state_dict_for_sync` yields."""


class EngineError(PolicyUnavailable):
    """The engine cannot serve: its process failed or exited, or it was closed. The message says why."""


@runtime_checkable
class Engine(Protocol):
    """A policy that samples with weights the learner updates between two of its generations."""

    name: str

    @property
    def version(self) -> int:
        """The policy version of the weights the next generation uses."""
        ...

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput: ...

    def update_weights(self, weights: NamedTensors, policy_version: int) -> None:
        """Replace every weight, between two generations, and name the new weights `policy_version`."""
        ...

    def close(self) -> None:
        """Free the model (and stop its process); idempotent."""
        ...


def make_engine(name: str, model: str, **options: Any) -> Engine:
    """An engine by short name (`hf`, `remote`) or `module:Class`, serving `model` (a path, hub id or known name)."""
    cls = load_named(name, ENGINES, "engine", install_hint=" (install the `train` extra: pip install 'forager[train]')")
    try:
        return cls(model, **options)
    except TypeError as err:
        raise ForagerError(f"engine {name!r} does not take these options: {err}") from err


__all__ = ["ENGINES", "Engine", "EngineError", "NamedTensors", "make_engine"]
