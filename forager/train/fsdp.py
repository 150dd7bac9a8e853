"""The learner's model: loaded in float32 with the attention kernel asked for, layers checkpointed, and sharded
with torch FSDP2 (`fully_shard`, one unit per decoder layer, then the root) when there is more than one rank."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from forager.train.samples import LearnerError
from forager.train.sections import FSDPConfig, LearnerConfig

if TYPE_CHECKING:
    import torch


def default_device(config: LearnerConfig) -> torch.device:
    """CUDA device LOCAL_RANK when the config asks for GPUs, else the CPU."""
    import os

    import torch

    if config.num_gpus == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LearnerError(f"learner.num_gpus is {config.num_gpus} but torch sees no GPU; set learner.num_gpus=0 "
                           "to train on the CPU")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def load_model(path: str | Path, attn_implementation: str, trust_remote_code: bool) -> Any:
    """The causal LM in float32 (the optimizer's master weights), with the attention kernel asked for."""
    import torch
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForCausalLM

    if not hasattr(getattr(transformers, "masking_utils", None), "find_packed_sequence_indices"):
        raise LearnerError(f"transformers {transformers.__version__} does not mask attention between packed "
                           "sequences (masking_utils.find_packed_sequence_indices); install transformers>=4.56")
    dtype_kw = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn_implementation,
                                                    trust_remote_code=trust_remote_code, **{dtype_kw: torch.float32})
    except (OSError, ValueError) as err:
        raise LearnerError(f"cannot load the model {path}: {err}") from err


def checkpoint_layers(model: Any) -> None:
    """Keep only each decoder layer's input and recompute the layer in backward (non-reentrant checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def shard(model: Any, fsdp: FSDPConfig, device: torch.device, world_size: int) -> None:
    """FSDP2: one `fully_shard` unit per decoder layer (`_no_split_modules` names their class), then the root."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch 2.4 and 2.5 keep FSDP2 under _composable
        from torch.distributed._composable.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if not fsdp.cpu_offload:
        model.to(device)
    mesh = init_device_mesh(device.type, (world_size,))
    options: dict[str, Any] = {
        "mesh": mesh, "reshard_after_forward": fsdp.reshard_after_forward,
        "mp_policy": MixedPrecisionPolicy(param_dtype=getattr(torch, fsdp.param_dtype),
                                          reduce_dtype=getattr(torch, fsdp.reduce_dtype))}
    if fsdp.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    layer_types = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise LearnerError(f"{type(model).__name__} names no decoder layer class (_no_split_modules): cannot shard "
                           "it layer by layer")
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
