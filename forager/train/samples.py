"""What the learner trains on: `TrainSample`s, their checks, and their packing into microbatches.

A sample is one episode as the model processed it: the exact token ids of the whole conversation (never
a re-rendered chat template), 1 in `loss_mask` on the tokens the model sampled, the sampler's logprob of
each token, and one advantage. Samples are packed end to end into one row per microbatch, with position
ids that restart at 0 for each sample; transformers reads those restarts as sequence boundaries and masks
attention across them (`masking_utils.find_packed_sequence_indices`), so no token is spent on padding
and a sample's logprobs do not depend on its neighbours.

Alignment: the logits at position t predict token t + 1, so a sample of n tokens feeds its first n - 1
tokens to the model and is scored on its last n - 1; its first token is never a model token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forager.core import ForagerError, Termination, Trajectory

if TYPE_CHECKING:
    import torch


class LearnerError(ForagerError):
    """The learner cannot train on this input or with these settings; the message says what to change."""


@dataclass(frozen=True)
class TrainSample:
    """One episode's tokens, the mask of the model's tokens, the sampler's logprobs and the advantage."""

    token_ids: list[int]
    """Every token of the episode in order: prompts, observations and sampled tokens (`Trajectory.token_sequence`)."""
    loss_mask: list[int]
    """1 on the tokens the model sampled (they are trained on), 0 elsewhere; aligned with `token_ids`."""
    sampler_logprobs: list[float]
    """The logprob the sampler recorded for each token (anything finite where `loss_mask` is 0)."""
    advantage: float
    """The episode's advantage (`forager.train.loss.group_advantages`), applied to each of its model tokens."""
    policy_version: int = 0
    """The oldest policy version among the episode's turns: how stale the sample is."""
    termination: Termination = "submitted"
    """How the episode ended (the loop masks truncated ones before they get here, if it is configured to)."""
    trajectory_id: str = ""
    """Which trajectory it came from, for the loop's record of what was trained on."""

    @classmethod
    def from_trajectory(cls, trajectory: Trajectory, advantage: float) -> TrainSample:
        """The sample of a trainable trajectory; a turn without tokens or a re-rendered prompt is an error."""
        try:
            ids, mask, logprobs = trajectory.token_sequence()
        except ValueError as err:
            raise LearnerError(f"{trajectory.trajectory_id} cannot be trained on: {err}") from err
        versions = [m.policy_version for m in trajectory.messages
                    if m.role == "assistant" and m.policy_version is not None]
        return cls(ids, mask, logprobs, float(advantage), min(versions, default=0), trajectory.termination,
                   trajectory.trajectory_id)

    @property
    def model_tokens(self) -> int:
        return sum(self.loss_mask)


def check_samples(samples: Sequence[TrainSample], vocab_size: int, microbatch_tokens: int) -> None:
    """Raise LearnerError naming the first sample that cannot be trained on, and why."""
    for index, sample in enumerate(samples):
        name = f"sample {index}" + (f" ({sample.trajectory_id})" if sample.trajectory_id else "")
        n = len(sample.token_ids)
        if len(sample.loss_mask) != n or len(sample.sampler_logprobs) != n:
            raise LearnerError(f"{name}: {n} token ids, {len(sample.loss_mask)} mask entries and "
                               f"{len(sample.sampler_logprobs)} logprobs; all three must be aligned token for token")
        if n > microbatch_tokens:
            raise LearnerError(f"{name} has {n} tokens, more than learner.microbatch_tokens ({microbatch_tokens}); "
                               "an episode is never split across microbatches: raise learner.microbatch_tokens")
        bad = next((t for t in sample.token_ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise LearnerError(f"{name}: token id {bad} is outside the model's vocabulary (0..{vocab_size - 1}); "
                               "the trajectory was sampled by a model with another tokenizer")
        if any(m not in (0, 1) for m in sample.loss_mask):
            raise LearnerError(f"{name}: loss_mask holds values other than 0 and 1")
        if sample.loss_mask and sample.loss_mask[0]:
            raise LearnerError(f"{name}: the first token is in the loss mask, but nothing precedes it to predict it")
        if not any(sample.loss_mask):
            raise LearnerError(f"{name} has no model token (its loss mask is all 0): nothing to train on; "
                               "leave episodes without sampled tokens out of the batch")
        if not math.isfinite(sample.advantage):
            raise LearnerError(f"{name}: advantage {sample.advantage} is not finite")
        if any(m and not math.isfinite(lp) for m, lp in zip(sample.loss_mask, sample.sampler_logprobs)):
            raise LearnerError(f"{name}: a model token's sampler logprob is NaN or infinite")


def pack(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Sample indices grouped into microbatches of at most `budget` tokens: first fit, longest first.

    Deterministic (ties keep the input order), and each group lists its samples in input order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    room: list[int] = []
    for i in order:
        slot = next((g for g, left in enumerate(room) if lengths[i] <= left), None)
        if slot is None:
            groups.append([])
            room.append(budget)
            slot = len(groups) - 1
        groups[slot].append(i)
        room[slot] -= lengths[i]
    return [sorted(group) for group in groups]


@dataclass
class Microbatch:
    """Samples packed into one row for the model, and their per-token inputs to the loss laid out (S, L)."""

    input_ids: torch.Tensor
    """(1, N): each sample's tokens but its last, end to end."""
    position_ids: torch.Tensor
    """(1, N): 0, 1, ... restarting at each sample (the packing boundaries)."""
    targets: torch.Tensor
    """(1, N): the token each position predicts (the sample's next token)."""
    gather: torch.Tensor
    """(S, L) long: where in the row token t + 1 of sample s is predicted; 0 on padding (masked)."""
    loss_mask: torch.Tensor
    """(S, L) float: 1 on model tokens."""
    sampler_logprobs: torch.Tensor
    """(S, L): the recorded logprobs, aligned with `loss_mask`."""
    advantages: torch.Tensor
    """(S,): one per sample."""
    samples: list[int] = field(default_factory=list)
    """Indices of the samples in the step's batch."""

    def unpack(self, per_position: torch.Tensor) -> torch.Tensor:
        """(1, N) values of the packed row as (S, L), one row per sample (padding holds position 0's value)."""
        return per_position[0, self.gather]


def build_microbatch(samples: Sequence[TrainSample], indices: list[int], device: Any) -> Microbatch:
    """The packed row and the (S, L) loss inputs of `samples[i] for i in indices`."""
    import torch

    chosen = [samples[i] for i in indices]
    width = max(len(s.token_ids) - 1 for s in chosen)
    inputs: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    gather = torch.zeros(len(chosen), width, dtype=torch.long)
    mask = torch.zeros(len(chosen), width)
    logprobs = torch.zeros(len(chosen), width, dtype=torch.float64)
    for row, sample in enumerate(chosen):
        n = len(sample.token_ids) - 1
        gather[row, :n] = torch.arange(len(inputs), len(inputs) + n)
        inputs += sample.token_ids[:-1]
        targets += sample.token_ids[1:]
        positions += range(n)
        mask[row, :n] = torch.tensor(sample.loss_mask[1:], dtype=mask.dtype)
        logprobs[row, :n] = torch.tensor(sample.sampler_logprobs[1:], dtype=torch.float64)
    return Microbatch(
        input_ids=torch.tensor([inputs], device=device), position_ids=torch.tensor([positions], device=device),
        targets=torch.tensor([targets], device=device), gather=gather.to(device), loss_mask=mask.to(device),
        sampler_logprobs=logprobs.to(device, torch.float32).masked_fill(mask.to(device) == 0, 0.0),
        advantages=torch.tensor([s.advantage for s in chosen], device=device), samples=list(indices))


def token_logprobs(model: Any, batch: Microbatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs, entropy) of the packed row, each (1, N): log p(target | prefix) with gradient, and the
    entropy of each position's distribution without. In float32 whatever the model's dtype; the logits are
    divided by the sampling temperature, as the sampler's recorded logprobs were (`forager.policies.hf`)."""
    import torch

    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits  # (1, N, V)
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    normaliser = torch.logsumexp(logits, dim=-1)  # (1, N)
    logprobs = logits.gather(-1, batch.targets[..., None]).squeeze(-1) - normaliser  # (1, N)
    with torch.no_grad():
        entropy = normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # H = logZ - E_p[z]
    return logprobs, entropy
