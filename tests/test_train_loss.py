"""The GRPO loss against an independent float64 reference written as plain Python loops.

The reference below never calls `forager.train.loss` and never vectorises: it walks every episode and
every token, computes each token's loss and its derivative by hand, and aggregates with explicit
weights, so a slip in the tensor code (a broadcast, a mask, a sign, a clamp) shows up as a mismatch.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from forager.train.loss import (
    LossError,
    aggregate,
    episode_mask,
    group_advantages,
    kl_estimate,
    policy_loss,
)

# -- the reference ---------------------------------------------------------------------------------


def ref_advantages(rewards, groups, baseline="mean", std_normalize=False, eps=1e-6):
    advantages, keep = [], []
    for i in range(len(rewards)):
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        n = len(members)
        if max(members) == min(members):  # every advantage of the group is zero: skipped
            advantages.append(0.0)
            keep.append(False)
            continue
        mean = 0.0
        for x in members:
            mean += x
        mean /= n
        if baseline == "mean":
            a = rewards[i] - mean
        else:
            others = 0.0
            for j in range(len(rewards)):
                if groups[j] == groups[i] and j != i:
                    others += rewards[j]
            a = rewards[i] - others / (n - 1)
        if std_normalize:
            squares = 0.0
            for x in members:
                squares += (x - mean) ** 2
            a = a / (math.sqrt(squares / (n - 1)) + eps)
        advantages.append(a)
        keep.append(True)
    return advantages, keep


def clamp(x, low, high):
    return max(low, min(high, x))


def ref_token(lp, old, a, eps_low, eps_high):
    """(loss, d loss / d lp) of one token's clipped surrogate."""
    x = lp - old
    r = math.exp(clamp(x, -20.0, 20.0))
    unclipped = -a * r
    clipped = -a * clamp(r, 1 - eps_low, 1 + eps_high)
    if clipped > unclipped:  # the clipped branch is taken: flat in lp
        return clipped, 0.0
    return unclipped, (-a * r if abs(x) < 20 else 0.0)


def ref_kl(lp, ref, estimator):
    """(estimate, d estimate / d lp) of KL(learner || reference) at one token."""
    d = clamp(ref - lp, -20.0, 20.0)
    if estimator == "k1":
        return -d, 1.0
    if estimator == "k2":
        return 0.5 * d * d, -d
    k = math.exp(d) - d - 1
    return (10.0, 0.0) if k > 10 else (k, 1.0 - math.exp(d))


def ref_weights(mask, aggregation, constant):
    """c[b][t] with the aggregated loss = sum over tokens of c * token loss."""
    B, T = len(mask), len(mask[0])
    weights = [[0.0] * T for _ in range(B)]
    tokens = sum(mask[b][t] for b in range(B) for t in range(T))
    sequences = sum(1 for b in range(B) if sum(mask[b]) > 0)
    for b in range(B):
        length = sum(mask[b])
        for t in range(T):
            if mask[b][t]:
                if aggregation == "constant":
                    weights[b][t] = 1.0 / constant
                elif aggregation == "token_mean":
                    weights[b][t] = 1.0 / tokens
                else:
                    weights[b][t] = 1.0 / (length * sequences)
    return weights


def ref_policy_loss(lp, old, adv, mask, *, eps_low=0.2, eps_high=0.25, aggregation="constant", constant=131072,
                    ref=None, kl_coef=0.0, estimator="k3", sampler=None, tis_cap=None):
    """(loss, gradient [B][T], stats) of the whole loss, token by token."""
    B, T = len(lp), len(lp[0])
    weights = ref_weights(mask, aggregation, constant)
    loss, pg_sum, kl_sum, grad = 0.0, 0.0, 0.0, [[0.0] * T for _ in range(B)]
    tokens = clip_low = clip_high = approx = kl_mean = 0.0
    ratio_max, tis_sum, tis_max, tis_hits, sampler_kl = 0.0, 0.0, 0.0, 0.0, 0.0
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            a = adv[b] if not isinstance(adv[b], list) else adv[b][t]
            token_loss, slope = ref_token(lp[b][t], old[b][t], a, eps_low, eps_high)
            x = clamp(lp[b][t] - old[b][t], -20.0, 20.0)
            r = math.exp(x)
            tokens += 1
            clip_low += 1 if a < 0 and r < 1 - eps_low else 0
            clip_high += 1 if a > 0 and r > 1 + eps_high else 0
            approx += r - 1 - x
            ratio_max = max(ratio_max, r)
            if sampler is not None:
                y = clamp(old[b][t] - sampler[b][t], -20.0, 20.0)
                raw = math.exp(y)
                w = min(raw, tis_cap) if tis_cap is not None else raw
                tis_sum, tis_max = tis_sum + w, max(tis_max, w)
                tis_hits += 1 if tis_cap is not None and raw > tis_cap else 0
                sampler_kl += raw - 1 - y
                if tis_cap is not None:
                    token_loss, slope = token_loss * w, slope * w
            pg_sum += weights[b][t] * token_loss
            grad[b][t] = weights[b][t] * slope
            if ref is not None:
                k, dk = ref_kl(lp[b][t], ref[b][t], estimator)
                kl_sum += weights[b][t] * k
                kl_mean += k
                if kl_coef > 0:
                    grad[b][t] += kl_coef * weights[b][t] * dk
    loss = pg_sum + (kl_coef * kl_sum if ref is not None and kl_coef > 0 else 0.0)
    n = max(tokens, 1)
    stats = {"loss": loss, "policy_loss": pg_sum, "kl_loss": kl_sum, "tokens": tokens, "clip_frac_low": clip_low / n,
             "clip_frac_high": clip_high / n, "clip_frac": (clip_low + clip_high) / n, "approx_kl": approx / n,
             "ratio_max": ratio_max}
    if ref is not None:
        stats["ref_kl"] = kl_mean / n
    if sampler is not None:
        stats.update(tis_weight_mean=tis_sum / n, tis_weight_max=tis_max, tis_clip_frac=tis_hits / n,
                     sampler_kl=sampler_kl / n)
    return loss, grad, stats


# -- inputs ----------------------------------------------------------------------------------------


def make_batch(seed, B=6, T=9, per_token_advantages=False):
    """Random logprobs whose ratios land on both sides of both clip bounds; masks of varied lengths."""
    rng = random.Random(seed)
    lp = [[-rng.uniform(0.05, 4.0) for _ in range(T)] for _ in range(B)]
    old = [[lp[b][t] + rng.gauss(0.0, 0.35) for t in range(T)] for b in range(B)]
    ref = [[lp[b][t] + rng.gauss(0.0, 0.5) for t in range(T)] for b in range(B)]
    sampler = [[old[b][t] + rng.gauss(0.0, 0.4) for t in range(T)] for b in range(B)]
    mask = [[1 if rng.random() < 0.7 else 0 for _ in range(T)] for _ in range(B)]
    mask[0] = [0] * T  # an episode masked out whole (a skipped group)
    mask[1] = [0, 0, 1, 1, 1, 0, 1, 1, 0][:T]  # prompt, a turn, an observation, a turn, padding
    ref[1][2] = lp[1][2] + 3.0  # k3 = e^3 - 4 > 10: the clamp, and its flat gradient, are exercised
    if per_token_advantages:
        adv = [[rng.uniform(-1.5, 1.5) for _ in range(T)] for _ in range(B)]
    else:
        adv = [rng.choice([-1.0, -0.5, 0.25, 0.75, 1.0]) for _ in range(B)]
    return lp, old, ref, sampler, mask, adv


def t64(rows):
    return torch.tensor(rows, dtype=torch.float64)


# -- advantages ------------------------------------------------------------------------------------

REWARDS = [1.0, -1.0, -1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.3, 2.0, 0.1, 0.1, 0.1, 7.0, -3.0, 0.25, 1.5]
GROUPS = ["a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "d", "d", "d", "e", "f", "f", "f"]
# a: mixed; b: uniform (skipped); c: a pair; d: uniform with a float mean that is not exact; e: alone.


@pytest.mark.parametrize("baseline,std_normalize", list(itertools.product(["mean", "leave_one_out"], [False, True])))
def test_advantages_match_the_reference(baseline, std_normalize):
    expected, expected_keep = ref_advantages(REWARDS, GROUPS, baseline, std_normalize)
    advantages, keep = group_advantages(torch.tensor(REWARDS, dtype=torch.float64), GROUPS, baseline=baseline,
                                        std_normalize=std_normalize)
    assert advantages.dtype == torch.float64
    assert advantages.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert keep.tolist() == expected_keep


def test_cwm_advantage_is_reward_minus_group_mean_without_std():
    advantages, keep = group_advantages([1.0, -1.0, -1.0, -1.0], [7, 7, 7, 7])
    assert advantages.tolist() == [1.5, -0.5, -0.5, -0.5]
    assert keep.all()


def test_zero_advantage_groups_are_exactly_zero_and_skipped():
    # 0.1 * 3 / 3 != 0.1 in floating point: the uniform group must still come out exactly 0
    advantages, keep = group_advantages([0.1, 0.1, 0.1, 1.0, 0.0, 5.0], ["u", "u", "u", "m", "m", "alone"],
                                        std_normalize=True)
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0] and advantages[5].item() == 0.0
    assert keep.tolist() == [False, False, False, True, True, False]


def test_zero_advantage_groups_leave_the_loss_and_its_gradient():
    rewards, groups = [1.0, 1.0, -1.0, 1.0], ["same", "same", "mixed", "mixed"]
    advantages, keep = group_advantages(rewards, groups)
    logprobs = torch.full((4, 3), -1.0, dtype=torch.float64, requires_grad=True)
    old = logprobs.detach() - 0.05
    mask = torch.ones(4, 3, dtype=torch.float64) * keep[:, None]
    loss, stats = policy_loss(logprobs, old, advantages, mask)
    loss.backward()
    assert stats.tokens == 6.0
    assert logprobs.grad[:2].abs().sum().item() == 0.0
    assert logprobs.grad[2:].abs().sum().item() > 0.0


def test_leave_one_out_is_n_over_n_minus_1_times_the_mean_baseline():
    rewards, groups = [3.0, 1.0, 0.0, 2.0], ["g"] * 4
    mean, _ = group_advantages(rewards, groups, baseline="mean")
    loo, _ = group_advantages(rewards, groups, baseline="leave_one_out")
    assert loo.tolist() == pytest.approx((mean * 4 / 3).tolist())


def test_advantages_accept_tensor_group_ids_and_integer_rewards():
    advantages, keep = group_advantages(torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert advantages.dtype == torch.get_default_dtype()
    assert advantages.tolist() == [0.5, -0.5, 0.0, 0.0] and keep.tolist() == [True, True, False, False]


# -- the loss --------------------------------------------------------------------------------------

CASES = list(itertools.product(
    ["constant", "token_mean", "sequence_mean"],
    [(None, 0.0), ("k1", 0.1), ("k2", 0.05), ("k3", 0.2), ("k3", 0.0)],  # (estimator, kl_coef); k3 at 0: stats only
    [(False, None), (True, None), (True, 1.5)],  # (sampler logprobs given, tis_cap)
))


@pytest.mark.parametrize("aggregation,kl,tis", CASES)
def test_loss_gradient_and_stats_match_the_reference(aggregation, kl, tis):
    estimator, kl_coef = kl
    with_sampler, tis_cap = tis
    clipped_low = clipped_high = 0.0
    for seed, per_token in ((1, False), (2, True), (4, False)):
        lp, old, ref, sampler, mask, adv = make_batch(seed, per_token_advantages=per_token)
        kwargs = dict(eps_low=0.2, eps_high=0.28, aggregation=aggregation, constant=4096.0, kl_coef=kl_coef,
                      tis_cap=tis_cap)
        expected, expected_grad, expected_stats = ref_policy_loss(
            lp, old, adv, mask, ref=ref if estimator else None, estimator=estimator or "k3",
            sampler=sampler if with_sampler else None, **kwargs)
        logprobs = t64(lp).requires_grad_(True)
        loss, stats = policy_loss(
            logprobs, t64(old), t64(adv), t64(mask), ref_logprobs=t64(ref) if estimator else None,
            kl_estimator=estimator or "k3", sampler_logprobs=t64(sampler) if with_sampler else None, **kwargs)
        loss.backward()
        assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert logprobs.grad.tolist() == [pytest.approx(row, rel=1e-10, abs=1e-15) for row in expected_grad]
        for name, value in expected_stats.items():
            assert getattr(stats, name) == pytest.approx(value, rel=1e-10, abs=1e-14), name
        clipped_low, clipped_high = clipped_low + stats.clip_frac_low, clipped_high + stats.clip_frac_high
    assert clipped_low > 0 and clipped_high > 0  # both clip bounds were exercised


def test_the_constant_aggregation_divides_by_the_constant_exactly():
    # ratios of exactly 1 and dyadic advantages: every sum is exact, so the check can be `==`
    logprobs = torch.full((3, 5), -0.75, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]], dtype=torch.float64)
    advantages = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    loss, _ = policy_loss(logprobs, logprobs.clone(), advantages, mask)
    assert loss.item() == -(0.5 * 3 - 0.25 * 5 + 1.0 * 2) / 131072
    loss, _ = policy_loss(logprobs, logprobs.clone(), advantages, mask, constant=1000)
    assert loss.item() == -(0.5 * 3 - 0.25 * 5 + 1.0 * 2) / 1000


def test_the_constant_aggregation_has_no_length_normalisation():
    """Doubling an episode's tokens doubles its weight under `constant`; `sequence_mean` does not."""
    lp = torch.zeros(2, 8, dtype=torch.float64)
    short = torch.tensor([[1] * 4 + [0] * 4, [0] * 8], dtype=torch.float64)
    long = torch.tensor([[1] * 8, [0] * 8], dtype=torch.float64)
    adv = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for aggregation, factor in (("constant", 2.0), ("token_mean", 1.0), ("sequence_mean", 1.0)):
        a, _ = policy_loss(lp, lp, adv, short, aggregation=aggregation)
        b, _ = policy_loss(lp, lp, adv, long, aggregation=aggregation)
        assert b.item() == factor * a.item()


def test_masked_tokens_get_zero_gradient_whatever_they_hold():
    lp, old, ref, sampler, mask, adv = make_batch(3, per_token_advantages=True)
    logprobs = t64(lp)
    old_t, ref_t, sampler_t, mask_t, adv_t = t64(old), t64(ref), t64(sampler), t64(mask), t64(adv)
    hidden = mask_t == 0
    logprobs[hidden] = float("nan")  # padding and prompt positions may hold anything
    old_t[hidden] = ref_t[hidden] = sampler_t[hidden] = adv_t[hidden] = float("nan")
    logprobs.requires_grad_(True)
    loss, stats = policy_loss(logprobs, old_t, adv_t, mask_t, ref_logprobs=ref_t, kl_coef=0.1,
                              sampler_logprobs=sampler_t, tis_cap=2.0, entropy=torch.rand(6, 9, dtype=torch.float64))
    loss.backward()
    assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in stats.metrics().values())
    assert (logprobs.grad[hidden] == 0).all()
    assert (logprobs.grad[~hidden] != 0).sum() > 10


def test_bf16_logprobs_are_computed_in_float32():
    lp = torch.randn(2, 4).to(torch.bfloat16).requires_grad_(True)
    loss, _ = policy_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 4))
    loss.backward()
    assert loss.dtype == torch.float32 and lp.grad.dtype == torch.bfloat16


def test_entropy_stat_and_metric_names():
    lp = torch.zeros(2, 3)
    entropy = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    _, stats = policy_loss(lp, lp, torch.ones(2), mask, entropy=entropy, sampler_logprobs=lp)
    assert stats.entropy == pytest.approx(2.0)
    metrics = stats.metrics()
    assert {"loss/total", "loss/policy", "policy/clip_frac", "policy/approx_kl", "policy/entropy",
            "tis/weight_mean", "tis/sampler_kl"} <= set(metrics)
    assert "ref/kl" not in metrics  # no reference given


def test_kl_estimates_against_closed_forms():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    d = [-0.5, 1.0]
    assert kl_estimate(lp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert kl_estimate(lp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    assert kl_estimate(lp, ref, "k3").tolist() == pytest.approx([math.exp(x) - x - 1 for x in d])


def test_aggregate_on_an_empty_mask_is_zero():
    losses = torch.ones(2, 3)
    for aggregation in ("constant", "token_mean", "sequence_mean"):
        assert aggregate(losses, torch.zeros(2, 3), aggregation).item() == 0.0


# -- episode mask and errors -----------------------------------------------------------------------


def test_episode_mask_drops_truncated_episodes_by_default():
    ends = ["submitted", "out_of_context", "out_of_turns", "policy_error"]
    assert episode_mask(ends).tolist() == [True, False, False, True]
    assert episode_mask(ends, masked=("policy_error",)).tolist() == [True, True, True, False]
    assert episode_mask(ends, masked=()).all()
    with pytest.raises(LossError, match="unknown termination 'timeout'"):
        episode_mask(["submitted", "timeout"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(kl_coef=0.1), "needs ref_logprobs"),
    (dict(tis_cap=2.0), "tis_cap needs sampler_logprobs"),
    (dict(aggregation="seq-mean"), "unknown option 'seq-mean'"),
    (dict(eps_low=1.0), "clip range"),
    (dict(constant=0, aggregation="constant"), "must be positive"),
])
def test_bad_options_are_clear_errors(kwargs, message):
    lp = torch.zeros(2, 3)
    with pytest.raises(LossError, match=message):
        policy_loss(lp, lp, torch.ones(2), torch.ones(2, 3), **kwargs)


def test_misaligned_shapes_are_clear_errors():
    lp = torch.zeros(2, 3)
    with pytest.raises(LossError, match="old_logprobs has shape"):
        policy_loss(lp, torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3))
    with pytest.raises(LossError, match="advantages must be"):
        policy_loss(lp, lp, torch.ones(3), torch.ones(2, 3))
    with pytest.raises(LossError, match="one group id per episode"):
        group_advantages([1.0, 2.0], ["a"])
    with pytest.raises(LossError, match="NaN"):
        group_advantages([1.0, float("nan")], ["a", "a"])
