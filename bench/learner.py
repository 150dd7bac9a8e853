"""Learner throughput on this machine: tokens per second of one full-parameter GRPO step.

    python bench/learner.py                      # the tests' tiny Llama, then a SmolLM2-135M-shaped one
    python bench/learner.py --tiny-only
    python bench/learner.py --model smollm2-135m-instruct --tokens 2048   # the real converted weights

Random token ids with a mask alternating prompt and model spans, a 1-rank learner in float32 (the CPU
path), one warm-up step then the best of `--steps`. Last line: JSON with every result.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from forager.policies.models import resolve_model
from forager.train.learner import Learner, TrainSample
from forager.train.sections import FSDPConfig, LearnerConfig

TINY = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True)
SMOLLM2_SHAPE = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                            num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                            max_position_embeddings=8192)


def samples(vocab: int, lengths: list[int], seed: int = 0) -> list[TrainSample]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        quarter = n // 4
        mask = [0] * quarter + [1] * quarter + [0] * quarter + [1] * (n - 3 * quarter)
        logprobs = [-math.log(vocab) + rng.gauss(0, 0.1) if m else 0.0 for m in mask]
        out.append(TrainSample([rng.randrange(vocab) for _ in range(n)], mask, logprobs, rng.choice([-1.0, 1.0])))
    return out


def run(model_dir: str, vocab: int, lengths: list[int], microbatch: int, checkpointing: bool, steps: int,
        label: str) -> dict:
    learner = Learner(model_dir, LearnerConfig(lr=1e-5, microbatch_tokens=microbatch, fsdp=FSDPConfig(
        param_dtype="float32", activation_checkpointing=checkpointing)))
    batch = samples(vocab, lengths)
    learner.step(batch)  # warm-up
    metrics = [learner.step(batch) for _ in range(steps)]
    result = {"label": label, "tokens": metrics[-1]["perf/tokens"], "activation_checkpointing": checkpointing,
              "step_s": min(m["perf/step_s"] for m in metrics),
              "tokens_per_s": max(m["perf/tokens_per_s"] for m in metrics), "threads": torch.get_num_threads()}
    print(json.dumps(result), flush=True)
    return result


def random_model(config: LlamaConfig, directory: str) -> str:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-only", action="store_true")
    parser.add_argument("--model", help="a model name or path instead of the SmolLM2-shaped random one")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step (two samples)")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run(random_model(TINY, f"{tmp}/tiny"), TINY.vocab_size, [51, 45, 43, 40, 40, 36, 32, 27],
                           80, False, 5, "tiny llama, 314 tokens"))
        if not args.tiny_only:
            model = resolve_model(args.model) if args.model else random_model(SMOLLM2_SHAPE, f"{tmp}/smol")
            half = args.tokens // 2
            for checkpointing in (False, True):
                results.append(run(model, SMOLLM2_SHAPE.vocab_size, [half, args.tokens - half], args.tokens,
                                   checkpointing, args.steps, f"{args.model or 'smollm2-135m shape'}, {args.tokens} tokens"))
    print(json.dumps({"bench": "learner", "results": results}))


if __name__ == "__main__":
    main()
