"""The 32B plan: per-GPU memory of the learner and the GPUs the planner chooses for CWM's budgets.

    python bench/plan_32b.py [--models Qwen3-32B Qwen2.5-32B] [--gpu-memory 80 141]

CWM's RL budgets: a 131,072-token context, microbatches of one full-length episode (131,072 tokens per
data-parallel group), FSDP2 with fp32 shards and AdamW, bf16 compute, activation checkpointing. For each model
and GPU size the planner (`forager.train.plan.choose_layout`) picks the fewest learner GPUs and the least
sequence parallelism that fit, and the vLLM tensor parallel size and engine count that hold 256 episodes in
flight (a batch of 32 tasks x 8) on the fewest GPUs: once with every episode at the full context (the
worst case), once at 32,768 tokens (a typical SWE episode). Pure arithmetic, no GPU needed.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json

from forager.train.plan import GIB, choose_layout

CONTEXT = 131_072
IN_FLIGHT = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["Qwen3-32B", "Qwen2.5-32B"])
    parser.add_argument("--gpu-memory", nargs="+", type=float, default=[80.0, 141.0])
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    args = parser.parse_args()
    rows = []
    for model in args.models:
        for memory in args.gpu_memory:
            for episode_tokens in (CONTEXT, 32_768):
                layout = choose_layout(model, gpu_memory_gib=memory, microbatch_tokens=CONTEXT,
                                       episode_tokens=episode_tokens, episodes_in_flight=args.in_flight)
                learner, samplers = layout.learner, layout.samplers
                row = {"model": model, "gpu_gib": memory, "episode_tokens": episode_tokens,
                       "learner_gpus": learner.gpus, "sequence_parallel": learner.sequence_parallel,
                       "learner_gib_per_gpu": round(learner.total / GIB, 1),
                       "sampler_tensor_parallel": samplers.tensor_parallel, "sampler_engines": samplers.engines,
                       "sampler_gpus": samplers.gpus, "sampler_weights_gib_per_gpu": round(samplers.weights_gib_per_gpu, 1),
                       "sampler_kv_gib_per_gpu": round(samplers.kv_gib_per_gpu, 1),
                       "episodes_per_engine": samplers.episodes_per_engine, "total_gpus": layout.gpus}
                rows.append(row)
                print(f"{model} on {memory:g} GiB GPUs, episodes of {episode_tokens:,} tokens: learner {learner.gpus} "
                      f"GPUs (sequence parallel {learner.sequence_parallel}, {row['learner_gib_per_gpu']} GiB each), "
                      f"samplers {samplers.engines} x TP{samplers.tensor_parallel} = {samplers.gpus} GPUs "
                      f"({samplers.episodes_per_engine} episodes each) -> {layout.gpus} GPUs", flush=True)
    print(json.dumps({"context": CONTEXT, "in_flight": args.in_flight, "layouts": rows}))


if __name__ == "__main__":
    main()
