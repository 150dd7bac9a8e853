"""The GRPO loss and its advantages: pure functions on torch tensors, CWM's variant by default.

CWM's defaults: only model tokens count (`loss_mask` 1 on sampled tokens, 0 on prompts and
observations); the advantage is the reward minus the group mean, without dividing by the group's
standard deviation; the per-token losses are summed and divided by a constant (131,072), never by a
trajectory's length; PPO's clip is asymmetric (clip-higher, eps_low 0.2, eps_high 0.25) against the
logprobs the sampler recorded; no KL term; groups whose advantages are all zero are skipped.

The options follow verl (`verl/trainer/ppo/core_algos.py`: `compute_grpo_outcome_advantage`,
`compute_rloo_outcome_advantage`, `compute_policy_loss_vanilla`, `agg_loss`, `kl_penalty`) and
SkyRL (`skyrl_train/utils/ppo_utils.py`: `ppo_policy_loss`, `reduce_loss`, `compute_approx_kl`);
where they differ, the docstrings say which one this follows. A trainer step reads:

    advantages, keep = group_advantages(rewards, task_ids)
    keep &= episode_mask(terminations)            # optional: drop truncated episodes from the loss
    mask = loss_mask * keep[:, None]              # (B, T): model tokens of the kept episodes
    loss, stats = policy_loss(logprobs, sampler_logprobs, advantages, mask)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch

from forager.core import ForagerError, Termination

Baseline = Literal["mean", "leave_one_out"]
Aggregation = Literal["constant", "token_mean", "sequence_mean"]
KLEstimator = Literal["k1", "k2", "k3"]

CWM_LOSS_CONSTANT = 131_072
"""CWM's divisor of the summed token losses: its RL context length, so a batch's loss scale does not
depend on how long its trajectories happen to be."""
LOG_RATIO_CLAMP = 20.0
"""Log-ratios are clamped to +-20 before `exp` (verl and SkyRL do the same) so a stray token cannot overflow."""
K3_CLAMP = 10.0
"""The k3 estimator is clamped at 10, as verl's `kl_penalty` and SkyRL's `compute_approx_kl` do."""
TRUNCATED_TERMINATIONS = ("out_of_context", "out_of_turns")
"""Episodes cut off by a budget rather than ended by the agent: the ones `episode_mask` drops by default."""


class LossError(ForagerError):
    """The loss's inputs do not fit together (shapes, an unknown option, a missing tensor)."""


@dataclass(frozen=True)
class LossStats:
    """What one loss evaluation measured; every mean is over the tokens in `loss_mask`."""

    loss: float
    """The value returned (policy part plus `kl_coef` times the KL part)."""
    policy_loss: float
    """The clipped surrogate, aggregated."""
    kl_loss: float
    """The KL-to-reference term, aggregated, before `kl_coef` (0 without a reference)."""
    tokens: float
    """Model tokens that counted (the sum of `loss_mask`)."""
    clip_frac: float
    """Tokens whose clipped branch was taken (the ratio left [1-eps_low, 1+eps_high] on the side the
    advantage pushes toward); verl's `pg_clipfrac`. The sum of the next two."""
    clip_frac_low: float
    """Tokens with a negative advantage and a ratio below 1-eps_low."""
    clip_frac_high: float
    """Tokens with a positive advantage and a ratio above 1+eps_high (what clip-higher loosens)."""
    approx_kl: float
    """k3 estimate of KL(old || learner) from the old policy's samples: mean of r - 1 - log r, r = p/p_old."""
    ratio_max: float
    """The largest learner/old probability ratio."""
    ref_kl: float | None = None
    """The chosen estimator of KL(learner || reference), when a reference is given."""
    entropy: float | None = None
    """Mean of the per-token entropy passed in, when one is."""
    tis_weight_mean: float | None = None
    """Mean truncated importance weight min(p_old/p_sampler, cap), when sampler logprobs are given."""
    tis_weight_max: float | None = None
    """The largest of those weights (at most the cap)."""
    tis_clip_frac: float | None = None
    """Tokens whose weight hit the cap."""
    sampler_kl: float | None = None
    """k3 estimate of KL(sampler || old): how far the sampler's numbers are from the learner's."""

    def metrics(self) -> dict[str, float]:
        """Namespaced names for a logger (`loss/policy`, `policy/clip_frac`, ...), Nones left out."""
        names = {"loss": "loss/total", "policy_loss": "loss/policy", "kl_loss": "loss/kl", "tokens": "loss/tokens",
                 "ref_kl": "ref/kl", "entropy": "policy/entropy", "sampler_kl": "tis/sampler_kl"}
        return {names.get(key, key.replace("tis_", "tis/") if key.startswith("tis_") else f"policy/{key}"): value
                for key, value in asdict(self).items() if value is not None}


def group_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_ids: torch.Tensor | Sequence[Hashable],
    *,
    baseline: Baseline = "mean",
    std_normalize: bool = False,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode advantages and which episodes to keep: `(advantages [B], keep_mask [B] bool)`.

    A group is the episodes of one task (`group_ids[i]`: its task id, any hashable). With n members
    and group mean m:
      - `mean` (CWM, Dr. GRPO): A_i = r_i - m.
      - `leave_one_out` (RLOO, verl's `compute_rloo_outcome_advantage`): A_i = r_i - (sum_j r_j - r_i) / (n - 1),
        which equals n / (n - 1) * (r_i - m).
      - `std_normalize` (the original GRPO, verl's default): A_i /= (s + eps), s the group's standard
        deviation with Bessel's correction (torch.std, as verl and SkyRL use).
    A group whose rewards are all equal (a group of one included) has advantages identically zero under
    every option: they are set to exactly 0 (no float residue from the mean) and `keep_mask` is False,
    so the caller skips it (CWM: such groups carry no signal and would only dilute the batch).
    Computed in float64; returned in the rewards' float dtype (the default dtype for integer rewards).
    """
    if baseline not in get_args(Baseline):
        raise LossError(f"unknown baseline {baseline!r}; choose one of {', '.join(get_args(Baseline))}")
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != 1:
        raise LossError(f"rewards must be one per episode, shape [B]; got shape {tuple(rewards.shape)}")
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if len(ids) != rewards.shape[0]:
        raise LossError(f"{len(ids)} group ids for {rewards.shape[0]} rewards: give one group id per episode")
    r = rewards.to(torch.float64)
    if not torch.isfinite(r).all():
        raise LossError("rewards contain NaN or infinity: the grader's result is broken, fix it before training")
    index: dict[Hashable, int] = {}
    group = torch.tensor([index.setdefault(g, len(index)) for g in ids], dtype=torch.long, device=r.device)
    zeros = torch.zeros(len(index), dtype=torch.float64, device=r.device)
    count = zeros.index_add(0, group, torch.ones_like(r))
    total = zeros.index_add(0, group, r)
    mean = total / count
    if baseline == "mean":
        advantages = r - mean[group]
    else:
        advantages = r - (total[group] - r) / (count[group] - 1).clamp(min=1)
    if std_normalize:
        variance = zeros.index_add(0, group, (r - mean[group]) ** 2) / (count - 1).clamp(min=1)
        advantages = advantages / (variance.sqrt()[group] + eps)
    highest = zeros.scatter_reduce(0, group, r, "amax", include_self=False)
    lowest = zeros.scatter_reduce(0, group, r, "amin", include_self=False)
    uniform = (highest == lowest)[group]
    advantages = torch.where(uniform, torch.zeros_like(advantages), advantages)
    dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    return advantages.to(dtype), ~uniform


def episode_mask(
    terminations: Sequence[str], masked: Sequence[str] = TRUNCATED_TERMINATIONS
) -> torch.Tensor:
    """True for episodes that stay in the loss: those whose termination is not in `masked`.

    By default the episodes cut off by a budget (`out_of_context`, `out_of_turns`) are dropped, as
    DAPO's overlong filtering does: the agent did not choose to stop, so its last actions are not
    evidence for or against them. The mask applies to the loss only; the episode's reward still
    counts in its group's baseline (compute `group_advantages` over all of them).
    """
    known = get_args(Termination)
    for name in [*masked, *terminations]:
        if name not in known:
            raise LossError(f"unknown termination {name!r}; a trajectory ends as one of: {', '.join(known)}")
    return torch.tensor([t not in masked for t in terminations], dtype=torch.bool)


def aggregate(
    token_losses: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation = "constant",
    constant: float = CWM_LOSS_CONSTANT,
) -> torch.Tensor:
    """One scalar from per-token losses [B, T] and a 0/1 mask [B, T] (masked entries must be finite).

      - `constant` (CWM, Dr. GRPO): sum_{b,t} l[b,t] m[b,t] / constant. Microbatches' and ranks' losses
        add up without knowing each other's sizes, and no trajectory's tokens weigh more for being
        short. verl's `seq-mean-token-sum-norm` divides the same sum by the padded length T, SkyRL's
        `seq_mean_token_sum_norm` by B * max_seq_len; a fixed constant keeps the scale fixed across batches.
      - `token_mean` (verl's and SkyRL's `token-mean`): sum l m / sum m (0 when nothing is masked in).
      - `sequence_mean` (verl's `seq-mean-token-mean`, SkyRL's `sequence_mean`): the mean over
        sequences of sum_t l m / sum_t m, over the sequences with at least one token in the mask
        (verl and SkyRL average over every row; rows masked out whole, skipped groups, do not dilute it here).
    """
    masked = token_losses * mask
    if aggregation == "constant":
        if constant <= 0:
            raise LossError(f"the loss constant must be positive, got {constant}")
        return masked.sum() / constant
    if aggregation == "token_mean":
        return masked.sum() / mask.sum().clamp(min=1)
    if aggregation == "sequence_mean":
        lengths = mask.sum(dim=-1)  # (B,)
        present = lengths > 0
        per_sequence = masked.sum(dim=-1) / lengths.clamp(min=1)  # (B,)
        return (per_sequence * present).sum() / present.sum().clamp(min=1)
    raise LossError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(get_args(Aggregation))}")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(learner || reference) from the learner's samples (Schulman, "Approximating
    KL divergence", 2020), as verl's `kl_penalty` computes it. With d = ref - logprob (clamped to +-20):
    k1 = -d; k2 = d^2 / 2; k3 = exp(d) - d - 1 (non-negative, unbiased, low variance; clamped at 10)."""
    delta = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta.square()
    if estimator == "k3":
        return (delta.exp() - delta - 1).clamp(max=K3_CLAMP)
    raise LossError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(get_args(KLEstimator))}")


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    eps_low: float = 0.2, eps_high: float = 0.25,
    aggregation: Aggregation = "constant", constant: float = CWM_LOSS_CONSTANT,
    ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0, kl_estimator: KLEstimator = "k3",
    sampler_logprobs: torch.Tensor | None = None, tis_cap: float | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The clipped policy-gradient loss (a scalar to minimise) and its stats.

    Per-token tensors are [B, T]; `advantages` is [B] (one per episode, broadcast over its tokens) or
    [B, T]; `loss_mask` is 1 on the model's tokens that count. With r = exp(logprobs - old_logprobs)
    (the log-ratio clamped to +-20) and A the advantage, each token's loss is PPO's clipped surrogate
    with clip-higher (DAPO; verl's `compute_policy_loss_vanilla` with clip_ratio_low/high, SkyRL's
    `ppo_policy_loss` with eps_clip_low/high):
        l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
    `old_logprobs` are the logprobs the sampler recorded (CWM: no recomputation), or, with TIS, the
    learner's own logprobs under the weights that sampled. Options:
      - TIS, truncated importance sampling for the sampler/learner mismatch (Yao et al. 2025, verl's
        and SkyRL's `tis_imp_ratio_cap`): l *= w, w = min(exp(old_logprobs - sampler_logprobs), tis_cap),
        no gradient through w. Needs `sampler_logprobs`; without `tis_cap` they only feed the stats.
      - KL to a frozen reference: loss += kl_coef * aggregate(kl_estimate(logprobs, ref_logprobs)),
        as verl's `use_kl_loss` (the KL term is not importance-weighted).
    The loss is `aggregate(l, loss_mask, aggregation, constant)` (see `aggregate`). Masked entries take
    no part: they may hold anything finite or not, and get exactly zero gradient. Computed in at least
    float32 whatever the logprobs' dtype.
    """
    _check_inputs(logprobs, {"old_logprobs": old_logprobs, "loss_mask": loss_mask, "ref_logprobs": ref_logprobs,
                             "sampler_logprobs": sampler_logprobs, "entropy": entropy}, advantages)
    _check_options(eps_low, eps_high, aggregation, kl_estimator, kl_coef, ref_logprobs, tis_cap, sampler_logprobs)
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    keep = loss_mask.bool()
    mask = keep.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=logprobs.device)
    adv = advantages.to(dtype)
    adv = torch.where(keep, adv[:, None].expand_as(logprobs) if adv.ndim == 1 else adv, zero)
    log_ratio = torch.where(keep, logprobs.to(dtype) - old_logprobs.to(dtype).detach(), zero)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps_low, 1 + eps_high))  # (B, T)
    tis = _tis_weights(old_logprobs, sampler_logprobs, keep, dtype, tis_cap)
    if tis is not None and tis_cap is not None:
        surrogate = surrogate * tis[0]
    pg = aggregate(surrogate, mask, aggregation, constant)
    loss, values = pg, {"policy_loss": pg.detach(), "kl_loss": torch.zeros_like(pg)}
    if ref_logprobs is not None:
        per_token_kl = kl_estimate(torch.where(keep, logprobs.to(dtype), zero),
                                   torch.where(keep, ref_logprobs.to(dtype), zero), kl_estimator)
        kl_part = aggregate(per_token_kl, mask, aggregation, constant)
        values.update(kl_loss=kl_part.detach(), ref_kl=_masked_mean(per_token_kl.detach(), mask))
        if kl_coef > 0:
            loss = pg + kl_coef * kl_part
    values.update(loss=loss.detach(), **_ratio_stats(ratio.detach(), log_ratio.detach(), adv, keep, eps_low, eps_high))
    if entropy is not None:
        values["entropy"] = _masked_mean(torch.where(keep, entropy.to(dtype), zero).detach(), mask)
    if tis is not None:
        values.update(tis[1])
    return loss, _stats(values)


def _ratio_stats(
    ratio: torch.Tensor, log_ratio: torch.Tensor, adv: torch.Tensor, keep: torch.Tensor, eps_low: float,
    eps_high: float,
) -> dict[str, torch.Tensor]:
    """Clip fractions (verl's `pg_clipfrac`, split by side), the k3 KL(old || learner) and the largest ratio."""
    mask = keep.to(ratio.dtype)
    high = (adv > 0) & (ratio > 1 + eps_high) & keep
    low = (adv < 0) & (ratio < 1 - eps_low) & keep
    return {
        "tokens": mask.sum(),
        "clip_frac_low": _masked_mean(low.to(ratio.dtype), mask),
        "clip_frac_high": _masked_mean(high.to(ratio.dtype), mask),
        "approx_kl": _masked_mean(ratio - 1 - log_ratio, mask),
        "ratio_max": torch.where(keep, ratio, torch.zeros_like(ratio)).amax() if ratio.numel() else ratio.sum(),
    }


def _stats(values: dict[str, torch.Tensor]) -> LossStats:
    """The stats as floats, read from the device in one transfer."""
    names = list(values)
    numbers = torch.stack([values[name].reshape(()) for name in names]).tolist()
    floats = dict(zip(names, numbers))
    floats["clip_frac"] = floats["clip_frac_low"] + floats["clip_frac_high"]
    return LossStats(**floats)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _tis_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor | None, keep: torch.Tensor, dtype: torch.dtype,
    cap: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
    """w = min(p_old / p_sampler, cap) per token (no gradient), and its stats; None without sampler logprobs."""
    if sampler_logprobs is None:
        return None
    with torch.no_grad():
        zero = torch.zeros((), dtype=dtype, device=old_logprobs.device)
        mask = keep.to(dtype)
        log_w = torch.where(keep, old_logprobs.to(dtype) - sampler_logprobs.to(dtype), zero)
        log_w = log_w.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        raw = log_w.exp()
        weights = raw.clamp(max=cap) if cap is not None else raw
        stats = {
            "tis_weight_mean": _masked_mean(weights, mask),
            "tis_weight_max": torch.where(keep, weights, zero).amax() if weights.numel() else zero,
            "tis_clip_frac": _masked_mean((raw > cap).to(dtype) if cap is not None else torch.zeros_like(raw), mask),
            "sampler_kl": _masked_mean(raw - 1 - log_w, mask),
        }
    return weights, stats


def _check_inputs(logprobs: torch.Tensor, aligned: dict[str, torch.Tensor | None], advantages: torch.Tensor) -> None:
    if logprobs.ndim != 2:
        raise LossError(f"logprobs must be [batch, seq]; got shape {tuple(logprobs.shape)}")
    for name, tensor in aligned.items():
        if tensor is not None and tensor.shape != logprobs.shape:
            raise LossError(f"{name} has shape {tuple(tensor.shape)}, logprobs {tuple(logprobs.shape)}: "
                            "every per-token tensor must be [batch, seq] and aligned token for token")
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise LossError(f"advantages must be [batch] or [batch, seq] = {tuple(logprobs.shape)}; "
                        f"got {tuple(advantages.shape)}")


def _check_options(
    eps_low: float, eps_high: float, aggregation: str, kl_estimator: str, kl_coef: float,
    ref_logprobs: torch.Tensor | None, tis_cap: float | None, sampler_logprobs: torch.Tensor | None,
) -> None:
    if not 0 <= eps_low < 1 or eps_high < 0:
        raise LossError(f"clip range needs 0 <= eps_low < 1 and eps_high >= 0; got {eps_low}, {eps_high}")
    for value, choices in ((aggregation, get_args(Aggregation)), (kl_estimator, get_args(KLEstimator))):
        if value not in choices:
            raise LossError(f"unknown option {value!r}; choose one of {', '.join(choices)}")
    if kl_coef < 0:
        raise LossError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and ref_logprobs is None:
        raise LossError("kl_coef > 0 needs ref_logprobs: the frozen reference model's logprobs of the same tokens")
    if tis_cap is not None and (tis_cap < 1 or sampler_logprobs is None):
        raise LossError("tis_cap needs sampler_logprobs (the logprobs the inference engine recorded) and a cap >= 1"
                        f"; got cap {tis_cap} and {'no ' if sampler_logprobs is None else ''}sampler logprobs")
