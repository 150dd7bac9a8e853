"""The learner: full-parameter GRPO updates of a transformers causal LM, sharded with torch FSDP2 over ranks.

One `step(samples)` is one optimizer step on one batch: the samples (each rank's share of the batch) are
packed into microbatches of at most `learner.microbatch_tokens` tokens; for each, the learner recomputes
the logprobs of the recorded token ids (teacher forcing, never a re-rendered template), applies
`forager.train.loss.policy_loss`, and backpropagates; then it clips the gradient norm, sets the learning
rate of the schedule and takes an AdamW step. The policy version goes up by one per step taken.

Scaling, so that the sum of the microbatches' gradients over all ranks is the gradient of the whole
batch's loss: `constant` divides each microbatch's token sum by the constant; `token_mean` by the model
tokens of the whole batch (counted across ranks first); `sequence_mean` weighs each microbatch's mean over
its sequences by its share of the batch's sequences. FSDP2 averages gradients over ranks when it
reduce-scatters them, so each rank's loss is multiplied by the world size to make that average a sum.
Ranks run the same number of forward/backward passes (each pass gathers parameters collectively): a rank
with fewer microbatches runs passes of zero weight.

More than one rank (a process group initialised by the caller, e.g. `torchrun`): each decoder layer is
one `fully_shard` unit, then the root; mixed precision per `learner.fsdp`. One rank: the plain module on
its device, under `torch.autocast` when `learner.fsdp.param_dtype` is not float32.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forager.train.fsdp import checkpoint_layers, default_device, load_model, shard
from forager.train.loss import policy_loss
from forager.train.ranks import rank_and_world
from forager.train.samples import LearnerError, Microbatch, TrainSample, build_microbatch, check_samples, pack, \
    token_logprobs
from forager.train.sections import AlgorithmConfig, LearnerConfig, OptimizerConfig

if TYPE_CHECKING:
    import torch

    from forager.train.config import TrainConfig

__all__ = ["Learner", "LearnerError", "TrainSample", "lr_at"]

MEAN_STATS = ("clip_frac", "clip_frac_low", "clip_frac_high", "approx_kl", "entropy", "tis_weight_mean",
              "tis_clip_frac", "sampler_kl", "ref_kl")
"""LossStats fields that are means over a microbatch's model tokens: averaged over the batch by tokens."""
MAX_STATS = ("ratio_max", "tis_weight_max")
STAT_NAMES = {**{key: f"policy/{key}" for key in (*MEAN_STATS, *MAX_STATS)}, "tis_weight_mean": "tis/weight_mean",
              "tis_clip_frac": "tis/clip_frac", "sampler_kl": "tis/sampler_kl", "tis_weight_max": "tis/weight_max",
              "ref_kl": "ref/kl"}
"""Metric names, as `LossStats.metrics` names them."""


def lr_at(step: int, peak: float, optimizer: OptimizerConfig, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total_steps`.

    Linear warmup reaches `peak` at step `warmup_steps - 1` (step 0 already moves: (s + 1) / warmup);
    then `constant` stays, `linear` and `cosine` decay to `min_lr_ratio * peak` at the last step."""
    if step < optimizer.warmup_steps:
        return peak * (step + 1) / optimizer.warmup_steps
    if optimizer.schedule == "constant":
        return peak
    span = max(1, total_steps - 1 - optimizer.warmup_steps)
    progress = min(1.0, (step - optimizer.warmup_steps) / span)
    floor = optimizer.min_lr_ratio
    shape = 1 - progress if optimizer.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (floor + (1 - floor) * shape)


class Learner:
    """A causal LM, its AdamW optimizer and the GRPO step; FSDP2-sharded when the process group has > 1 rank."""

    def __init__(self, model_path: str | Path, learner: LearnerConfig | None = None,
                 optimizer: OptimizerConfig | None = None, algorithm: AlgorithmConfig | None = None, *,
                 temperature: float = 1.0, policy_version: int = 0, device: str | None = None,
                 attn_implementation: str = "sdpa", trust_remote_code: bool = False) -> None:
        import torch

        self.config = learner or LearnerConfig()
        self.optimizer_config = optimizer or OptimizerConfig()
        self.algorithm = algorithm or AlgorithmConfig()
        self.temperature = temperature
        self.step_count = 0
        """Optimizer steps taken (skipped steps do not count); the schedule's position."""
        self.policy_version = policy_version
        """The version of the current weights: what the engines report after the next weight sync."""
        self.rank, self.world_size = rank_and_world()
        self.distributed = self.world_size > 1
        self.device = torch.device(device) if device else default_device(self.config)
        self.model = load_model(model_path, attn_implementation, trust_remote_code)
        self.vocab_size: int = self.model.get_input_embeddings().num_embeddings
        if self.config.fsdp.activation_checkpointing:
            checkpoint_layers(self.model)
        if self.distributed:
            shard(self.model, self.config.fsdp, self.device, self.world_size)
        else:
            self.model.to(self.device)
        self.model.train()
        self.reference = self._frozen_reference(model_path, attn_implementation, trust_remote_code)
        """The policy as it was loaded, never updated: the KL term's reference (None when `kl_coef` is 0)."""
        opt = self.optimizer_config
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, betas=(opt.beta1, opt.beta2),
                                           eps=opt.eps, weight_decay=opt.weight_decay)

    def _frozen_reference(self, model_path: str | Path, attn_implementation: str, trust_remote_code: bool) -> Any:
        """The initial weights again, frozen and sharded like the policy, when the loss has a KL term.

        Loaded from `model_path`, not copied from the policy: a resumed run's policy has moved, its reference has
        not (verl's `ref` worker and SkyRL's `ref_model` do the same)."""
        if self.algorithm.kl_coef <= 0:
            return None
        reference = load_model(model_path, attn_implementation, trust_remote_code)
        reference.requires_grad_(False)
        if self.distributed:
            shard(reference, self.config.fsdp, self.device, self.world_size)
        else:
            reference.to(self.device)
        return reference.eval()

    @classmethod
    def from_config(cls, config: TrainConfig, *, model_path: str | Path | None = None, policy_version: int = 0,
                    device: str | None = None) -> Learner:
        """A learner for a `TrainConfig`: its model, learner, optimizer, algorithm, and sampling temperature."""
        return cls(model_path or config.model.path, config.learner, config.optimizer, config.algorithm,
                   temperature=config.rollout.temperature, policy_version=policy_version, device=device,
                   attn_implementation=config.model.attn_implementation,
                   trust_remote_code=config.model.trust_remote_code)

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return lr_at(self.step_count, self.config.lr, self.optimizer_config, self.config.steps)

    # -- the step --------------------------------------------------------------------------------
    def step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """One optimizer step on this rank's `samples` (every rank calls it together); returns the step's metrics.

        A batch in which every advantage is zero carries no signal: the step is skipped (no weight decay,
        no schedule step, no new policy version) and `learner/skipped` is 1 in the metrics."""
        started = time.perf_counter()
        self._check(samples)
        groups = pack([len(s.token_ids) for s in samples], self.config.microbatch_tokens)
        tokens, model_tokens, count, signed, oldest = self._reduce(
            [sum(len(s.token_ids) for s in samples), sum(s.model_tokens for s in samples), len(samples),
             sum(s.model_tokens for s in samples if s.advantage != 0),
             min((s.policy_version for s in samples), default=math.inf)], ["sum", "sum", "sum", "sum", "min"])
        passes = int(self._reduce([len(groups)], ["max"])[0])
        metrics = {"perf/tokens": tokens, "loss/tokens": model_tokens, "perf/samples": count,
                   "perf/microbatches": float(passes), "optim/lr": self.lr,
                   "learner/staleness_max": self.policy_version - oldest if count else 0.0}
        if signed == 0:
            return self._finish(metrics, started, skipped="zero_advantage")
        metrics |= self._accumulate(samples, groups, passes, model_tokens, count)
        return self._apply(metrics, started)

    def _check(self, samples: Sequence[TrainSample]) -> None:
        """Refuse bad samples on every rank at once: a rank raising alone would leave the others in a collective."""
        problem = None
        try:
            check_samples(samples, self.vocab_size, self.config.microbatch_tokens)
        except LearnerError as err:
            problem = err
        if self._reduce([float(problem is not None)], ["max"])[0]:
            raise problem or LearnerError("another rank's samples were refused (its error says why); no step taken")

    def _accumulate(self, samples: Sequence[TrainSample], groups: list[list[int]], passes: int,
                    model_tokens: float, sequences: float) -> dict[str, float]:
        """Forward and backward every microbatch (the gradients add up); the loss metrics of the whole batch."""
        import torch

        aggregation, constant, weigh = self._scaling(model_tokens, sequences)
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(2 + len(MEAN_STATS), dtype=torch.float64)  # loss, tokens, token-weighted means
        highs = torch.zeros(len(MAX_STATS), dtype=torch.float64)
        for index in range(passes):
            if index >= len(groups):
                self._idle_pass()
                continue
            batch = build_microbatch(samples, groups[index], self.device)
            stats, loss = self._forward_backward(batch, aggregation, constant, weigh(batch))
            means = [(getattr(stats, key) or 0.0) * stats.tokens for key in MEAN_STATS]
            sums += torch.tensor([loss, stats.tokens, *means], dtype=torch.float64)
            highs = torch.maximum(highs, torch.tensor([getattr(stats, key) or 0.0 for key in MAX_STATS],
                                                      dtype=torch.float64))
        summed = self._reduce(sums.tolist(), ["sum"] * len(sums))
        highest = self._reduce(highs.tolist(), ["max"] * len(highs))
        metrics = {"loss/total": summed[0], "loss/policy": summed[0]}
        metrics |= {STAT_NAMES[key]: value / max(summed[1], 1.0) for key, value in zip(MEAN_STATS, summed[2:])}
        metrics |= {STAT_NAMES[key]: value for key, value in zip(MAX_STATS, highest)}
        if self.algorithm.tis_cap is None:  # the TIS stats are not measured without TIS
            metrics = {key: value for key, value in metrics.items() if not key.startswith("tis/")}
        if self.reference is None:  # nor the KL to a reference there is none of
            metrics.pop("ref/kl")
        return metrics

    def _apply(self, metrics: dict[str, float], started: float) -> dict[str, float]:
        """Clip the gradients, set the scheduled learning rate, take the AdamW step and bump the policy version."""
        grad_norm = self._clip_gradients()
        metrics["optim/grad_norm"] = grad_norm
        if not math.isfinite(grad_norm):  # a NaN would poison every weight: leave them as they are
            self.optimizer.zero_grad(set_to_none=True)
            return self._finish(metrics, started, skipped="nonfinite_grad_norm")
        clip = self.optimizer_config.grad_clip
        metrics["optim/clipped"] = float(clip is not None and grad_norm > clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.policy_version += 1
        return self._finish(metrics, started, skipped=None)

    def _scaling(self, model_tokens: float, sequences: float) -> tuple[str, float, Any]:
        """(aggregation, constant, weight(batch)) that make the microbatches' losses sum to the batch's loss."""
        kind = self.algorithm.aggregation
        if kind == "constant":
            return "constant", float(self.algorithm.loss_constant), lambda batch: 1.0
        if kind == "token_mean":
            return "constant", model_tokens, lambda batch: 1.0
        return "sequence_mean", 1.0, lambda batch: len(batch.samples) / sequences

    def _forward_backward(self, batch: Microbatch, aggregation: str, constant: float,
                          weight: float) -> tuple[Any, float]:
        """Recompute one microbatch's logprobs, apply the loss, backpropagate; (LossStats, its share of the loss)."""
        with self._autocast():
            logprobs, entropy = token_logprobs(self.model, batch, self.temperature)
        logprobs, entropy = batch.unpack(logprobs), batch.unpack(entropy)  # (S, L)
        algo = self.algorithm
        tis = algo.tis_cap is not None
        # With TIS the ratio is against the learner's own logprobs under the weights that sampled: this step's
        # weights, since the batch gets one optimizer step; the recorded ones enter only through the TIS weight.
        old = logprobs.detach() if tis else batch.sampler_logprobs
        loss, stats = policy_loss(
            logprobs, old, batch.advantages, batch.loss_mask, eps_low=algo.eps_low, eps_high=algo.eps_high,
            aggregation=aggregation, constant=constant, sampler_logprobs=batch.sampler_logprobs if tis else None,
            tis_cap=algo.tis_cap, entropy=entropy, ref_logprobs=self._reference_logprobs(batch),
            kl_coef=algo.kl_coef, kl_estimator=algo.kl_estimator)  # type: ignore[arg-type]
        (loss * (weight * self.world_size)).backward()
        return stats, float(loss.detach()) * weight

    def _reference_logprobs(self, batch: Microbatch) -> Any:
        """The frozen reference's logprobs of the batch's tokens, (S, L) without gradient; None without a reference."""
        import torch

        if self.reference is None:
            return None
        with torch.no_grad(), self._autocast():
            logprobs, _ = token_logprobs(self.reference, batch, self.temperature)
        return batch.unpack(logprobs)

    def _idle_pass(self) -> None:
        """A forward and backward of weight zero, so this rank joins the other ranks' collectives."""
        import torch

        ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        with self._autocast():
            if self.reference is not None:  # its sharded forward gathers across ranks too
                with torch.no_grad():
                    self.reference(input_ids=ids, use_cache=False)
            logits = self.model(input_ids=ids, use_cache=False).logits
        (logits.float().sum() * 0.0).backward()

    def _clip_gradients(self) -> float:
        """Clip the global gradient norm to `optimizer.grad_clip` (FSDP2's DTensor gradients too); the norm before."""
        import torch

        clip = self.optimizer_config.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip is not None else math.inf)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def _finish(self, metrics: dict[str, float], started: float, skipped: str | None) -> dict[str, float]:
        elapsed = self._reduce([time.perf_counter() - started], ["max"])[0]
        metrics |= {"learner/skipped": float(skipped is not None), "learner/step": float(self.step_count),
                    "learner/policy_version": float(self.policy_version), "perf/step_s": elapsed,
                    "perf/tokens_per_s": metrics["perf/tokens"] / elapsed if elapsed > 0 else 0.0}
        if skipped:
            metrics[f"learner/skipped_{skipped}"] = 1.0
        return metrics

    # -- collectives and precision ---------------------------------------------------------------
    def _reduce(self, values: list[float], ops: list[str]) -> list[float]:
        """Each value reduced over ranks with its op (`sum`, `max`, `min`); unchanged on one rank."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        out = []
        for op in ("sum", "max", "min"):
            picked = [i for i, o in enumerate(ops) if o == op]
            if picked:
                tensor = torch.tensor([float(values[i]) for i in picked], dtype=torch.float64, device=self.device)
                dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                            "min": dist.ReduceOp.MIN}[op])
                out += list(zip(picked, tensor.tolist()))
        return [value for _, value in sorted(out)]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision on one rank (FSDP2's MixedPrecisionPolicy does it under sharding)."""
        import torch

        dtype = self.config.fsdp.param_dtype
        if self.distributed or dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, dtype))

    # -- weights out -----------------------------------------------------------------------------
    def state_dict_for_sync(self, bucket_bytes: int = 256 * 2**20, dtype: str | None = None
                            ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The full (unsharded) weights by state-dict name, in buckets of about `bucket_bytes`, for the engines.

        Every rank must iterate it to the end together under FSDP2 (each sharded tensor is gathered
        collectively); every rank receives the full tensors. Tied weights appear under each of their
        names (gathered once), so `load_state_dict(strict=True)` of a transformers model accepts them. On one
        rank the tensors share storage with the live weights: use them before the next step."""
        import torch

        cast = getattr(torch, dtype) if dtype else None
        state = self.model.state_dict(keep_vars=True)  # tied weights are one Parameter under two names
        names_of: dict[int, int] = {}
        for value in state.values():
            names_of[id(value)] = names_of.get(id(value), 0) + 1
        shared: dict[int, torch.Tensor] = {}
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, value in state.items():
            full = shared.get(id(value))
            if full is None:
                full = (value.full_tensor() if hasattr(value, "full_tensor") else value).detach()
                full = full.to(cast) if cast is not None else full
                if names_of[id(value)] > 1:
                    shared[id(value)] = full
            bucket.append((name, full))
            size += full.numel() * full.element_size()
            if size >= bucket_bytes:
                yield bucket
                bucket, size = [], 0
        if bucket:
            yield bucket

    def full_state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        """Every full weight by name, on the CPU (a collective under FSDP2: every rank calls it)."""
        return {name: tensor.to("cpu", copy=True)
                for bucket in self.state_dict_for_sync(dtype=dtype) for name, tensor in bucket}
