"""The memory planner against arithmetic done by hand, line by line, for SmolLM2-135M and a 32B model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forager.train.config import load_train_config
from forager.train.plan import (
    GIB,
    KNOWN_ARCHITECTURES,
    Architecture,
    PlanError,
    Precision,
    load_architecture,
    plan_from_config,
    plan_memory,
)

ROOT = Path(__file__).resolve().parents[1]
MIXED = Precision.bf16_params_fp32_optimizer()  # bf16 params and grads, fp32 master copy and two fp32 moments

# SmolLM2-135M: h=576, L=30, 9 heads, 3 kv heads, d=64, I=1536, V=49152, tied embeddings, no biases.
SMOL_LAYER = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536 + 2 * 576  # q, k+v, o, MLP, 2 norms
SMOL_ROOT = 49152 * 576 + 576  # one embedding (tied to the head), the final norm
SMOL_SAVED = 4 * 576 + 2 * 9 * 64 + 2 * 3 * 64 + 4 * 1536  # A: elements a layer saves per token

# Qwen2.5-32B: h=5120, L=64, 40 heads, 8 kv heads, d=128, I=27648, V=152064, untied, q/k/v biases.
QWEN_LAYER = 5120 * 5120 + 2 * 5120 * 1024 + 5120 * 5120 + (5120 + 2 * 1024) + 3 * 5120 * 27648 + 2 * 5120
QWEN_ROOT = 2 * 152064 * 5120 + 5120  # embedding and LM head, the final norm
QWEN_SAVED = 4 * 5120 + 2 * 40 * 128 + 2 * 8 * 128 + 4 * 27648


def test_the_hand_counts_are_the_published_sizes():
    assert SMOL_LAYER == 3_540_096 and SMOL_ROOT == 28_312_128 and SMOL_SAVED == 9_984
    assert 30 * SMOL_LAYER + SMOL_ROOT == 134_515_008  # SmolLM2-135M's parameter count
    assert QWEN_LAYER == 487_605_248 and QWEN_ROOT == 1_557_140_480 and QWEN_SAVED == 143_360
    assert 64 * QWEN_LAYER + QWEN_ROOT == 32_763_876_352  # Qwen2.5-32B's
    arch = KNOWN_ARCHITECTURES
    assert (arch["SmolLM2-135M"].layer_params(), arch["SmolLM2-135M"].root_params()) == (SMOL_LAYER, SMOL_ROOT)
    assert arch["SmolLM2-135M"].params() == 134_515_008
    assert arch["Qwen2.5-32B"].params() == 32_763_876_352
    assert arch["Llama-3-8B"].params() == 8_030_261_248
    assert arch["Qwen2.5-7B"].params() == pytest.approx(7.62e9, rel=0.005)
    assert arch["Qwen3-32B"].params() == pytest.approx(32.8e9, rel=0.005)


def test_smollm2_on_one_gpu_by_hand():
    plan = plan_memory("SmolLM2-135M", gpus=1, microbatch_tokens=8192, precision=MIXED, reserve_gib=4)
    P = 134_515_008
    assert plan.params == P * 2 == 269_030_016
    assert plan.grads == P * 2
    assert plan.optimizer == P * (4 + 8) == 1_614_180_096
    assert plan.gathered == (SMOL_ROOT + 2 * SMOL_LAYER) * 2 == 70_784_640
    assert plan.unsharded_grads == SMOL_ROOT * 4 == 113_248_512  # the root unit is the largest
    assert plan.activations == 8192 * (30 * 576 + SMOL_SAVED) * 2 == 446_693_376
    assert plan.logits == 8192 * 49152 * (2 + 4) == 2_415_919_104
    assert plan.reserve == 4 * GIB
    total = 269_030_016 * 2 + 1_614_180_096 + 70_784_640 + 113_248_512 + 446_693_376 + 2_415_919_104 + 4 * GIB
    assert plan.total == total  # 8.76 GiB
    assert plan.fits(9.0) and not plan.fits(8.5)


def test_smollm2_on_eight_gpus_by_hand():
    plan = plan_memory("smollm2-135m-instruct", gpus=8, microbatch_tokens=8192, precision=MIXED, reserve_gib=0)
    P = 134_515_008
    assert plan.params == P * 2 / 8 == 33_628_752
    assert plan.optimizer == P * 12 / 8 == 201_772_512
    assert plan.gathered == 70_784_640 and plan.unsharded_grads == 113_248_512  # a unit is whole on every GPU
    assert plan.activations == 446_693_376  # each GPU runs its own microbatch: data parallel
    assert plan.total == 33_628_752 * 2 + 201_772_512 + 70_784_640 + 113_248_512 + 446_693_376 + 2_415_919_104


def test_a_32b_model_on_eight_gpus_by_hand():
    plan = plan_memory("Qwen2.5-32B", gpus=8, microbatch_tokens=32768, precision=MIXED, reserve_gib=4)
    P = 32_763_876_352
    assert plan.params == P * 2 / 8 == 8_190_969_088
    assert plan.grads == 8_190_969_088
    assert plan.optimizer == P * 12 / 8 == 49_145_814_528
    assert plan.gathered == (QWEN_ROOT + 2 * QWEN_LAYER) * 2 == 5_064_701_952
    assert plan.unsharded_grads == QWEN_ROOT * 4 == 6_228_561_920
    assert plan.activations == 32768 * (64 * 5120 + QWEN_SAVED) * 2 == 30_870_077_440
    assert plan.logits == 32768 * 152064 * 6 == 29_896_998_912
    total = 8_190_969_088 * 2 + 49_145_814_528 + 5_064_701_952 + 6_228_561_920 + 30_870_077_440 + 29_896_998_912 \
        + 4 * GIB
    assert plan.total == total and total / GIB == pytest.approx(132.139, abs=1e-3)
    assert not plan.fits(80) and plan.fits(141)  # not on an H100, yes on an H200


def test_a_32b_model_on_sixty_four_gpus_by_hand():
    plan = plan_memory("Qwen2.5-32B", gpus=64, microbatch_tokens=131072, sequence_parallel=8, precision=MIXED,
                       reserve_gib=4)
    P, t = 32_763_876_352, 131072 / 8  # 16,384 tokens on each GPU of a sequence-parallel group
    assert plan.params == P * 2 / 64 == 1_023_871_136
    assert plan.optimizer == P * 12 / 64 == 6_143_226_816
    assert plan.activations == t * (64 * 5120 + QWEN_SAVED) * 2 == 15_435_038_720
    assert plan.logits == t * 152064 * 6 == 14_948_499_456
    total = 1_023_871_136 * 2 + 6_143_226_816 + 5_064_701_952 + 6_228_561_920 + 15_435_038_720 + 14_948_499_456 \
        + 4 * GIB
    assert plan.total == total and total / GIB == pytest.approx(50.443, abs=1e-3)
    assert plan.fits(80)


def test_without_activation_checkpointing_every_layer_keeps_its_activations():
    plan = plan_memory("Qwen2.5-32B", gpus=64, microbatch_tokens=4096, precision=MIXED, activation_checkpointing=False)
    assert plan.activations == 4096 * 64 * QWEN_SAVED * 2 == 75_161_927_680
    checkpointed = plan_memory("Qwen2.5-32B", gpus=64, microbatch_tokens=4096, precision=MIXED)
    assert checkpointed.activations == 4096 * (64 * 5120 + QWEN_SAVED) * 2
    assert plan.activations / checkpointed.activations == pytest.approx(64 * 143_360 / (64 * 5120 + 143_360))  # ~19.5x


def test_cpu_offload_moves_the_sharded_state_to_the_host():
    plan = plan_memory("Qwen2.5-32B", gpus=8, microbatch_tokens=32768, precision=MIXED, cpu_offload=True)
    assert plan.params == plan.grads == plan.optimizer == 0
    assert plan.host == 8_190_969_088 * 2 + 49_145_814_528
    assert plan.gathered == 5_064_701_952  # the units still gather on the GPU
    assert "on host" in plan.render(80)


def test_the_default_precision_is_fp32_shards_without_a_master_copy():
    plan = plan_memory("Llama-3-8B", gpus=16, microbatch_tokens=16384, reserve_gib=0)
    assert plan.params + plan.grads + plan.optimizer == 8_030_261_248 * 16 / 16


def test_max_microbatch_tokens_is_the_edge_of_fitting():
    plan = plan_memory("Qwen2.5-32B", gpus=64, microbatch_tokens=131072, sequence_parallel=8, precision=MIXED)
    tokens = plan.max_microbatch_tokens(80)
    assert tokens % 8 == 0
    def at(n):
        return plan_memory("Qwen2.5-32B", gpus=64, microbatch_tokens=n, sequence_parallel=8, precision=MIXED)
    assert at(tokens).fits(80) and not at(tokens + 8).fits(80)
    assert plan.max_microbatch_tokens(10) == 0


def test_render_is_a_readable_table():
    text = plan_memory("Qwen2.5-32B", gpus=8, microbatch_tokens=32768, precision=MIXED).render(80)
    assert "Qwen2.5-32B: 32.764 B parameters, FSDP2 over 8 GPU(s)" in text
    for row in ("parameter shards", "gradient shards", "AdamW state", "gathered parameters", "unsharded gradients",
                "activations (checkpointed)", "logits", "reserve", "total per GPU"):
        assert row in text
    assert "132.14" in text and "does NOT fit in 80 GiB" in text


def test_architecture_from_a_hugging_face_config(tmp_path):
    smol = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
            "attention_bias": False, "max_position_embeddings": 8192}
    (tmp_path / "SmolLM2-135M").mkdir()
    (tmp_path / "SmolLM2-135M" / "config.json").write_text(json.dumps(smol))
    assert load_architecture(tmp_path / "SmolLM2-135M") == KNOWN_ARCHITECTURES["SmolLM2-135M"]
    qwen3 = {"model_type": "qwen3", "hidden_size": 5120, "num_hidden_layers": 64, "num_attention_heads": 64,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 25600, "vocab_size": 151936,
             "tie_word_embeddings": False, "attention_bias": False}
    (tmp_path / "config.json").write_text(json.dumps(qwen3))
    loaded = load_architecture(tmp_path / "config.json")
    assert loaded.params() == KNOWN_ARCHITECTURES["Qwen3-32B"].params()
    assert loaded.qk_norm and loaded.head_size == 128
    qwen2 = {"model_type": "qwen2", "hidden_size": 5120, "num_hidden_layers": 64, "num_attention_heads": 40,
             "num_key_value_heads": 8, "intermediate_size": 27648, "vocab_size": 152064, "tie_word_embeddings": False}
    assert Architecture.from_hf_config(qwen2).params() == 32_763_876_352  # Qwen2 configs imply the q/k/v biases


def test_names_resolve_and_unknown_ones_are_clear_errors(tmp_path):
    assert load_architecture("Qwen/Qwen2.5-32B-Instruct").name == "Qwen2.5-32B"
    assert load_architecture("meta-llama/Meta-Llama-3-8B-Instruct").name == "Llama-3-8B"
    with pytest.raises(PlanError, match="unknown architecture 'org/Mystery-9B'.*config.json"):
        load_architecture("org/Mystery-9B")
    moe = tmp_path / "moe.json"
    moe.write_text(json.dumps({"hidden_size": 8, "num_local_experts": 8}))
    with pytest.raises(PlanError, match="mixture of experts"):
        load_architecture(moe)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"hidden_size": 8, "num_attention_heads": 2}))
    with pytest.raises(PlanError, match="lacks 'num_hidden_layers'"):
        load_architecture(partial)
    with pytest.raises(PlanError, match="sequence_parallel dividing gpus"):
        plan_memory("SmolLM2-135M", gpus=6, microbatch_tokens=10, sequence_parallel=4)


def test_the_cwm_32b_layout_fits_its_gpus():
    config = load_train_config(ROOT / "configs" / "train" / "cwm-32b.yaml")
    plan = plan_from_config(config)
    assert plan.architecture.name == "Qwen3-32B" and plan.gpus == 32 and plan.sequence_parallel == 8
    assert plan.fits(config.learner.gpu_memory_gib)
    assert plan.max_microbatch_tokens(config.learner.gpu_memory_gib) >= config.env.max_context_tokens


def test_the_default_config_plans_as_one_device():
    plan = plan_from_config(load_train_config())
    assert plan.gpus == 1 and plan.architecture.name == "SmolLM2-135M"


def test_the_layout_chooser_takes_the_fewest_gpus_that_fit() -> None:
    from forager.train.plan import GIB, choose_layout, choose_samplers, plan_memory

    layout = choose_layout("Qwen3-32B", gpu_memory_gib=80, microbatch_tokens=131_072, episode_tokens=32_768,
                           episodes_in_flight=256)
    learner = layout.learner
    assert learner.fits(80) and learner.gpus % 8 == 0
    for sp in (1, 2, 4, 8):  # one node fewer does not fit at any sequence parallelism
        smaller = plan_memory("Qwen3-32B", gpus=learner.gpus - 8, microbatch_tokens=131_072, sequence_parallel=sp)
        assert not smaller.fits(80)
    samplers = layout.samplers
    assert samplers.engines * samplers.episodes_per_engine >= 256
    assert samplers.kv_gib_per_gpu > 0 and samplers.weights_gib_per_gpu * samplers.tensor_parallel * GIB > 60 * GIB
    for tp in (1, 2, 4, 8):  # every other tensor parallel size needs at least as many GPUs
        assert samplers.gpus <= _sampler_gpus(tp)
    assert layout.gpus == learner.gpus + samplers.gpus
    assert "total:" in layout.render(80)
    worst = choose_samplers("Qwen3-32B", gpu_memory_gib=80, episode_tokens=131_072, episodes_in_flight=256)
    assert worst.gpus > samplers.gpus  # full-context episodes hold more KV cache


def _sampler_gpus(tp: int) -> float:
    import math

    from forager.train.plan import GIB, load_architecture

    arch = load_architecture("Qwen3-32B")
    free = 80 * 0.9 * GIB - arch.params() * 2 / tp - 2 * GIB
    per_episode = 2 * arch.num_layers * arch.num_kv_heads * arch.head_size * 2 * 32_768
    episodes = math.floor(free * tp / per_episode) if free > 0 else 0
    return tp * math.ceil(256 / episodes) if episodes else math.inf
