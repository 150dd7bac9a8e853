"""Weight-sync time: the learner's weights into a sampler process over gloo, and into an in-process engine.

    python bench/weight_sync.py [--models tiny smollm2-135m-instruct] [--syncs 3] [--bucket-mb 4 16 64 256]

For each model: this process holds the weights (as the learner would) and a `RemoteEngine` runs the
sampler in a child process; each sync broadcasts every weight in flat buckets (`train.sync`) and returns
once the sampler has loaded them, so the time includes packing, the gloo transfer over loopback TCP,
unpacking and the copy into the sampler's model. Each sync sends new values (a different seed), and the
sampler's per-tensor checksums are compared with the learner's after the last one. Sent as float32
(the engines' CPU dtype) and as bfloat16 (what a GPU learner sends). The in-process `HFEngine` copy is
timed too. `smollm2-135m-instruct` is converted from its GGUF on first use (see forager.policies.models).
Reported per model, dtype and bucket size: MB per sync, buckets, seconds per sync (median), of which
transfer, and MB/s. Then the vLLM engine's own path (`engines.vllm.VLLMEngine`) into a server process that
serves the model over HTTP (`forager.testing.openai_server`, the worker extension mixed in as vLLM mixes it):
pause, `/collective_rpc forager_receive`, the same gloo broadcast, vLLM's `load_weights` interface, resume.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from forager.policies.models import resolve_model
from forager.testing.tiny_model import build_tiny_model
from forager.train.engines.hf import HFEngine
from forager.train.engines.remote import RemoteEngine
from forager.train.sync import WeightBroadcaster, tensor_checksums


def new_weights(state: dict[str, torch.Tensor], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every weight nudged (a tied pair stays one tensor under both names, as a learner's state dict has it)."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[int, torch.Tensor] = {}
    for tensor in state.values():  # state_dict() gives each name its own tensor object: ties share storage
        if tensor.data_ptr() not in out:
            out[tensor.data_ptr()] = (tensor + 1e-3 * torch.randn(tensor.shape, generator=generator)).to(dtype)
    return {name: out[tensor.data_ptr()] for name, tensor in state.items()}


def bench_remote(path: str, state: dict[str, torch.Tensor], syncs: int, bucket_mb: int,
                 dtype: torch.dtype) -> dict[str, float]:
    broadcaster = WeightBroadcaster(1, bucket_bytes=bucket_mb * 2**20)
    engine = RemoteEngine(path, broadcaster=broadcaster, threads=1, temperature=0.0)
    try:
        broadcaster.connect(check=engine.check_alive)
        stats = []
        for version in range(1, syncs + 1):
            weights = new_weights(state, version, dtype)
            stats.append(broadcaster.broadcast(weights, version))
        expected = tensor_checksums({name: t.float() for name, t in weights.items()})
        if engine.checksums() != expected:
            raise SystemExit("the sampler's weights differ from the learner's")
        sampler_load_s = engine.status()["load_s"]
    finally:
        broadcaster.close()
        engine.close()
    seconds = statistics.median(s.seconds for s in stats)
    return {"mb": round(stats[-1].bytes / 1e6, 1), "buckets": stats[-1].buckets, "seconds": round(seconds, 3),
            "transfer_s": round(statistics.median(s.transfer_s for s in stats), 3),
            "sampler_load_s": round(sampler_load_s, 3), "mb_per_s": round(stats[-1].bytes / 1e6 / seconds, 1)}


def bench_in_process(path: str, state: dict[str, torch.Tensor], syncs: int) -> dict[str, float]:
    engine = HFEngine(path, temperature=0.0)
    times, _ = timed_updates(engine, state, syncs)
    engine.close()
    return {"seconds": round(statistics.median(times), 4)}


def timed_updates(engine: Any, state: dict[str, torch.Tensor], syncs: int) -> tuple[list[float], dict[str, Any]]:
    """Seconds of each of `syncs` float32 updates of `engine` with new values, and the last weights sent."""
    times = []
    for version in range(1, syncs + 1):
        weights = new_weights(state, version, torch.float32)
        started = time.monotonic()
        engine.update_weights(weights, version)
        times.append(time.monotonic() - started)
    return times, weights


def bench_vllm_engine(path: str, state: dict[str, torch.Tensor], syncs: int, bucket_mb: int) -> dict[str, float]:
    """The vLLM engine's update path end to end, into a test-server process holding the model in float32."""
    from forager.train.engines.vllm import EXTENSION, VLLMEngine

    command = [sys.executable, "-m", "forager.testing.openai_server", "--model", "{model}", "--port", "{port}",
               "--served-model-name", "{served_model_name}", "--worker-extension-cls", EXTENSION, "--threads", "1"]
    with VLLMEngine(path, server_command=command, bucket_bytes=bucket_mb * 2**20, sync="gloo",
                    start_timeout_s=600) as engine:
        times, weights = timed_updates(engine, state, syncs)
        if engine.checksums() != tensor_checksums(weights):
            raise SystemExit("the server's weights differ from the learner's")
        sent = engine.last_sync.bytes
    seconds = statistics.median(times)
    return {"mb": round(sent / 1e6, 1), "seconds": round(seconds, 3), "mb_per_s": round(sent / 1e6 / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m-instruct"])
    parser.add_argument("--syncs", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, nargs="+", default=[4, 16, 64, 256])
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.models:
        path = str(build_tiny_model()) if name == "tiny" else resolve_model(name)
        state = dict(AutoModelForCausalLM.from_pretrained(path).float().state_dict())
        params = sum(t.numel() for t in {t.data_ptr(): t for t in state.values()}.values())
        row = {"parameters": params, "in_process": bench_in_process(path, state, args.syncs)}
        for dtype in (torch.float32, torch.bfloat16):
            label = str(dtype).removeprefix("torch.")
            for bucket_mb in args.bucket_mb:
                row[f"gloo_{label}_{bucket_mb}mb"] = figures = bench_remote(path, state, args.syncs, bucket_mb, dtype)
                print(f"{name} ({params / 1e6:.1f}M) {label}, {bucket_mb} MiB buckets: {figures['mb']} MB in "
                      f"{figures['buckets']} buckets, {figures['seconds']} s per sync ({figures['transfer_s']} s "
                      f"transfer), {figures['mb_per_s']} MB/s", flush=True)
        bucket = 64 if 64 in args.bucket_mb else args.bucket_mb[0]
        row["vllm_engine_float32"] = figures = bench_vllm_engine(path, state, args.syncs, bucket)
        print(f"{name}: vLLM engine path (HTTP + worker extension + gloo, {bucket} MiB buckets): {figures['mb']} MB, "
              f"{figures['seconds']} s per sync, {figures['mb_per_s']} MB/s", flush=True)
        print(f"{name}: in-process update {row['in_process']['seconds']} s", flush=True)
        results[name] = row
    print(json.dumps({"bucket_mb": args.bucket_mb, "syncs": args.syncs, "results": results}))


if __name__ == "__main__":
    main()
