"""The learner on a tiny random Llama: logprob recomputation, FSDP2 over two gloo ranks against one rank,
clipping and the schedule, skipped steps, bad input, and the full weights handed to the engines."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from forager.core import Trajectory, TrajectoryMessage  # noqa: E402
from forager.train.learner import Learner, LearnerError, TrainSample, lr_at  # noqa: E402
from forager.train.samples import build_microbatch, pack, token_logprobs  # noqa: E402
from forager.train.sections import AlgorithmConfig, FSDPConfig, LearnerConfig, OptimizerConfig  # noqa: E402

VOCAB = 300


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 64, vocab 300, tied embeddings) saved in the transformers layout."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512,
                         tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def make_samples(seed: int, count: int) -> list[TrainSample]:
    """Two-turn episodes: prompt, model turn, observation, model turn; sampler logprobs near log 1/300."""
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        mask = ([0] * rng.randrange(5, 25) + [1] * rng.randrange(3, 15) + [0] * rng.randrange(3, 15)
                + [1] * rng.randrange(3, 15))
        ids = [rng.randrange(VOCAB) for _ in mask]
        logprobs = [-math.log(VOCAB) + rng.gauss(0, 0.1) if m else 0.0 for m in mask]
        samples.append(TrainSample(ids, mask, logprobs, rng.choice([-1.0, -0.5, 0.5, 1.0])))
    return samples


def learner_config(**fsdp: object) -> LearnerConfig:
    options = {"param_dtype": "float32", "activation_checkpointing": False, **fsdp}
    return LearnerConfig(lr=1e-3, steps=10, microbatch_tokens=80, fsdp=FSDPConfig(**options))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def parameters(learner: Learner) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in learner.model.named_parameters()}


# -- (a) logprobs recomputed from the recorded ids -------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_logprobs_equal_a_forward_per_sample(tiny, temperature):
    learner = Learner(tiny, learner_config())
    samples = make_samples(1, 5)
    batch = build_microbatch(samples, list(range(5)), learner.device)
    assert batch.input_ids.shape == (1, sum(len(s.token_ids) - 1 for s in samples))  # one row, no padding
    with torch.no_grad():
        packed, entropy = token_logprobs(learner.model, batch, temperature)
        packed, entropy = batch.unpack(packed), batch.unpack(entropy)  # (S, L)
        for row, sample in enumerate(samples):
            ids = torch.tensor([sample.token_ids])
            logits = learner.model(input_ids=ids, use_cache=False).logits[0, :-1].float() / temperature  # (n-1, V)
            logp = torch.log_softmax(logits, dim=-1)
            want = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)  # logits at t predict token t + 1
            on = torch.tensor(sample.loss_mask[1:], dtype=torch.bool)
            n = len(sample.token_ids) - 1
            torch.testing.assert_close(packed[row, :n][on], want[on], rtol=0, atol=2e-5)
            torch.testing.assert_close(entropy[row, :n], -(logp.exp() * logp).sum(-1), rtol=0, atol=2e-5)


def test_tokens_outside_the_mask_take_no_part(tiny):
    """Garbage sampler logprobs on prompt and observation tokens change nothing in the update."""
    clean = make_samples(2, 4)
    dirty = [TrainSample(s.token_ids, s.loss_mask, [lp if m else float("nan") for m, lp in
                                                     zip(s.loss_mask, s.sampler_logprobs)], s.advantage)
             for s in clean]
    results = []
    for samples in (clean, dirty):
        learner = Learner(tiny, learner_config())
        metrics = learner.step(samples)
        results.append((parameters(learner), metrics["loss/total"]))
    assert results[0][1] == results[1][1]
    for name, value in results[0][0].items():
        assert torch.equal(value, results[1][0][name]), name


# -- (b) two FSDP2 ranks over gloo equal one rank --------------------------------------------------

AGGREGATIONS = ("constant", "token_mean", "sequence_mean")


def _two_rank_worker(rank: int, world: int, init_file: str, model: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        samples = sorted(make_samples(3, 8), key=lambda s: -len(s.token_ids))
        mine = samples[:4] if rank == 0 else samples[4:]  # rank 0 holds the long ones: it needs more microbatches
        results = {"microbatches": len(pack([len(s.token_ids) for s in mine], 80))}
        for aggregation in AGGREGATIONS:
            # Activation checkpointing on here and off in the one-rank reference: it must not change the update.
            learner = Learner(model, learner_config(activation_checkpointing=True),
                              algorithm=AlgorithmConfig(aggregation=aggregation, loss_constant=1000))
            assert learner.distributed and type(learner.model).__name__.startswith("FSDP")
            for step in (1, 2):
                metrics = learner.step(mine)
                weights = learner.full_state_dict()  # every rank gathers
                results[(aggregation, step)] = (weights, metrics)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_two_fsdp2_ranks_on_gloo_equal_one_rank(tiny, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "ranks.pt"
    mp.spawn(_two_rank_worker, args=(2, str(tmp_path / "pg"), str(tiny), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=False)
    assert results["microbatches"] != len(pack([len(s.token_ids) for s in
                                                sorted(make_samples(3, 8), key=lambda s: -len(s.token_ids))[4:]], 80))
    samples = make_samples(3, 8)
    for aggregation in AGGREGATIONS:
        algorithm = AlgorithmConfig(aggregation=aggregation, loss_constant=1000)
        learner = Learner(tiny, learner_config(), algorithm=algorithm)
        assert not learner.distributed
        for step in (1, 2):
            metrics = learner.step(samples)
            weights, sharded = results[(aggregation, step)]
            # The gradient's scale shows in its norm (AdamW's first steps hardly depend on it).
            for key in ("loss/total", "optim/grad_norm", "loss/tokens", "perf/tokens", "policy/clip_frac",
                        "policy/approx_kl", "policy/entropy", "learner/policy_version"):
                assert sharded[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-9), (aggregation, step, key)
            single = learner.full_state_dict()
            assert single.keys() == weights.keys()
            for name, value in single.items():
                # fp32 sums run in another order on two ranks; AdamW moves each weight by about lr (1e-3) per
                # step whatever its gradient's size, so where a gradient nearly cancels that noise can show:
                # allowed up to 1e-5, 1% of one step.
                torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"{aggregation} step {step} {name}: {m}")


# -- (c) clipping and the learning-rate schedule ---------------------------------------------------

def test_schedule_warmup_then_decay():
    constant = OptimizerConfig(warmup_steps=4)
    assert [lr_at(s, 1.0, constant, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = OptimizerConfig(schedule="linear", warmup_steps=2, min_lr_ratio=0.1)
    assert [round(lr_at(s, 1.0, linear, 6), 6) for s in range(6)] == [0.5, 1.0, 1.0, 0.7, 0.4, 0.1]
    cosine = OptimizerConfig(schedule="cosine", min_lr_ratio=0.0)
    assert lr_at(0, 2.0, cosine, 5) == 2.0
    assert lr_at(2, 2.0, cosine, 5) == pytest.approx(1.0)  # halfway down the cosine
    assert lr_at(4, 2.0, cosine, 5) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(9, 2.0, cosine, 5) == pytest.approx(0.0, abs=1e-12)  # past the end it stays at the floor


def test_learner_follows_the_schedule(tiny):
    config = learner_config()
    config.steps = 4
    learner = Learner(tiny, config, OptimizerConfig(schedule="linear", warmup_steps=1, min_lr_ratio=0.5))
    samples = make_samples(4, 2)
    seen = [learner.step(samples)["optim/lr"] for _ in range(4)]
    assert seen == pytest.approx([1e-3, 1e-3, 0.75e-3, 0.5e-3])
    assert learner.step_count == 4 and learner.policy_version == 4


def test_clipping_scales_the_gradient(tiny):
    """The gradient AdamW receives (seen by a step pre-hook) has norm min(clip, norm), in the same direction."""
    samples = make_samples(5, 3)
    seen: list[list[torch.Tensor]] = []
    norms = []
    for clip in (None, "half"):
        learner = Learner(tiny, learner_config(), OptimizerConfig(grad_clip=norms[0] / 2 if clip else None))
        learner.optimizer.register_step_pre_hook(
            lambda optimizer, args, kwargs: seen.append([p.grad.clone() for g in optimizer.param_groups
                                                         for p in g["params"]]))
        metrics = learner.step(samples)
        norms.append(metrics["optim/grad_norm"])
        assert metrics["optim/clipped"] == (1.0 if clip else 0.0)
    assert norms[0] == pytest.approx(norms[1], rel=1e-6)  # the reported norm is the one before clipping
    full, clipped = seen
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in full])).item() == \
        pytest.approx(norms[0], rel=1e-5)
    scale = (norms[0] / 2) / (norms[0] + 1e-6)  # clip_grad_norm_ adds 1e-6 to the norm it divides by
    for whole, cut in zip(full, clipped):
        torch.testing.assert_close(cut, whole * scale, rtol=1e-5, atol=1e-12)


# -- (d) a batch without signal --------------------------------------------------------------------

def test_all_zero_advantages_skip_the_step(tiny):
    learner = Learner(tiny, learner_config())
    before = parameters(learner)
    samples = [TrainSample(s.token_ids, s.loss_mask, s.sampler_logprobs, 0.0) for s in make_samples(6, 3)]
    metrics = learner.step(samples)
    assert metrics["learner/skipped"] == 1.0 and metrics["learner/skipped_zero_advantage"] == 1.0
    assert learner.step_count == 0 and learner.policy_version == 0 and not learner.optimizer.state
    # Not even weight decay moved them.
    assert all(torch.equal(value, before[name]) for name, value in parameters(learner).items())
    taken = learner.step(make_samples(6, 3))
    assert taken["learner/skipped"] == 0.0 and learner.policy_version == 1


def test_a_nonfinite_gradient_skips_the_step(tiny):
    learner = Learner(tiny, learner_config())
    before = parameters(learner)
    huge = [TrainSample(s.token_ids, s.loss_mask, s.sampler_logprobs, 3e38) for s in make_samples(11, 2)]
    metrics = learner.step(huge)  # the loss overflows to infinity
    assert not math.isfinite(metrics["optim/grad_norm"])
    assert metrics["learner/skipped"] == 1.0 and metrics["learner/skipped_nonfinite_grad_norm"] == 1.0
    assert learner.policy_version == 0
    assert all(torch.equal(value, before[name]) for name, value in parameters(learner).items())


def test_truncated_importance_sampling_uses_the_learners_own_logprobs(tiny):
    """With TIS the PPO ratio is against this step's weights (1: no clipping); the sampler enters by the weight."""
    learner = Learner(tiny, learner_config(), algorithm=AlgorithmConfig(tis_cap=2.0))
    metrics = learner.step(make_samples(12, 3))
    assert metrics["policy/clip_frac"] == 0.0 and metrics["policy/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["policy/ratio_max"] == pytest.approx(1.0)
    assert 0 < metrics["tis/weight_mean"] <= metrics["tis/weight_max"] <= 2.0 and metrics["tis/sampler_kl"] > 0
    assert "tis/weight_mean" not in Learner(tiny, learner_config()).step(make_samples(12, 3))


# -- (e) bad input -----------------------------------------------------------------------------------

def test_bad_samples_are_refused_with_the_reason(tiny):
    learner = Learner(tiny, learner_config())
    good = make_samples(7, 1)[0]
    cases = {
        "outside the model's vocabulary": TrainSample([*good.token_ids[:-1], VOCAB], good.loss_mask,
                                                      good.sampler_logprobs, 1.0),
        "no model token": TrainSample(good.token_ids, [0] * len(good.token_ids), good.sampler_logprobs, 1.0),
        "aligned token for token": TrainSample(good.token_ids, good.loss_mask[:-1], good.sampler_logprobs, 1.0),
        "nothing precedes it": TrainSample(good.token_ids, [1] * len(good.token_ids), good.sampler_logprobs, 1.0),
        "more than learner.microbatch_tokens": TrainSample(good.token_ids * 10, good.loss_mask * 10,
                                                           good.sampler_logprobs * 10, 1.0),
    }
    for reason, sample in cases.items():
        with pytest.raises(LearnerError, match=reason):
            learner.step([good, sample])
    assert learner.step_count == 0


def test_kl_to_the_frozen_reference(tiny):
    """The reference is the loaded weights, frozen: at step 0 the KL term is 0 with a zero gradient (the update
    is the plain one); once the policy has moved, the term is positive, changes the update, and the reference
    itself never moves."""
    plain = Learner(tiny, learner_config())
    kl = Learner(tiny, learner_config(), algorithm=AlgorithmConfig(kl_coef=0.5))
    assert plain.reference is None and kl.reference is not None
    frozen = {name: p.detach().clone() for name, p in kl.reference.named_parameters()}
    assert not any(p.requires_grad for p in kl.reference.parameters())
    first = plain.step(make_samples(13, 3)), kl.step(make_samples(13, 3))
    assert "ref/kl" not in first[0] and first[1]["ref/kl"] == pytest.approx(0.0, abs=1e-7)
    for (name, a), b in zip(parameters(plain).items(), parameters(kl).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=name)
    second = plain.step(make_samples(14, 3)), kl.step(make_samples(14, 3))
    assert second[1]["ref/kl"] > 1e-6
    moved = max(float((a - b).abs().max()) for a, b in zip(parameters(plain).values(), parameters(kl).values()))
    assert moved > 1e-6  # the KL gradient pulled the second update toward the reference
    for name, p in kl.reference.named_parameters():
        assert torch.equal(p, frozen[name]), name


# -- weights out and samples in ------------------------------------------------------------------------

def test_full_weights_load_into_a_transformers_model(tiny):
    from transformers import AutoModelForCausalLM

    learner = Learner(tiny, learner_config())
    learner.step(make_samples(8, 2))
    buckets = list(learner.state_dict_for_sync(bucket_bytes=64 * 1024))
    assert len(buckets) > 1
    fresh = AutoModelForCausalLM.from_pretrained(tiny)
    fresh.load_state_dict({name: tensor for bucket in buckets for name, tensor in bucket}, strict=True)
    ids = torch.tensor([make_samples(9, 1)[0].token_ids])
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, learner.model(input_ids=ids).logits)
    half = learner.full_state_dict(dtype="bfloat16")
    assert half["lm_head.weight"].dtype == torch.bfloat16


def test_bfloat16_on_one_rank_keeps_float32_weights(tiny):
    learner = Learner(tiny, learner_config(param_dtype="bfloat16"))
    before = parameters(learner)
    metrics = learner.step(make_samples(10, 2))
    assert math.isfinite(metrics["loss/total"]) and metrics["learner/skipped"] == 0.0
    after = parameters(learner)
    assert all(p.dtype == torch.float32 for p in after.values())
    assert any(not torch.equal(after[name], before[name]) for name in before)


def test_sample_from_a_trajectory():
    messages = [
        TrajectoryMessage(role="system", content="s", token_ids=[1, 2, 3]),
        TrajectoryMessage(role="assistant", content="a", token_ids=[4, 5], logprobs=[-0.1, -0.2], loss_mask=1,
                          policy_version=3),
        TrajectoryMessage(role="tool", content="o", token_ids=[6]),
        TrajectoryMessage(role="assistant", content="b", token_ids=[7], logprobs=[-0.3], loss_mask=1,
                          policy_version=5),
    ]
    trajectory = Trajectory(trajectory_id="t#0", task_id="t", messages=messages, termination="out_of_turns")
    sample = TrainSample.from_trajectory(trajectory, advantage=0.5)
    assert sample.token_ids == [1, 2, 3, 4, 5, 6, 7] and sample.loss_mask == [0, 0, 0, 1, 1, 0, 1]
    assert sample.sampler_logprobs == [0.0, 0.0, 0.0, -0.1, -0.2, 0.0, -0.3]
    assert (sample.policy_version, sample.termination, sample.trajectory_id) == (3, "out_of_turns", "t#0")
    broken = trajectory.model_copy(update={"messages": [*messages, TrajectoryMessage(role="assistant", content="c")]})
    with pytest.raises(LearnerError, match="no token ids"):
        TrainSample.from_trajectory(broken, advantage=0.5)


def test_pack_first_fit_longest_first():
    assert pack([50, 30, 60, 20, 40], 100) == [[2, 4], [0, 1, 3]]
    assert pack([], 100) == []


def test_ranks_share_every_sample_once_balanced_by_tokens():
    from forager.train.ranks import share

    samples = make_samples(21, 9)
    parts = [share(samples, rank, 3) for rank in range(3)]
    assert sorted(id(s) for part in parts for s in part) == sorted(id(s) for s in samples)
    loads = [sum(len(s.token_ids) for s in part) for part in parts]
    assert max(loads) - min(loads) <= max(len(s.token_ids) for s in samples)  # greedy: within one sample
    assert share(samples, 0, 1) == samples and share(samples[:1], 1, 2) == []
