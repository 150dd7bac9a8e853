"""The ranks of a multi-process learner (`torchrun --nproc_per_node N -m forager train ...`).

Rank 0 leads: it runs the rollout, the buffer, the engines, the metrics and the task cursor. Every rank
holds a shard of the model (FSDP2, `forager.train.learner`) and takes part in each step: rank 0 sends the
step's samples to all (`broadcast`), each rank trains on its share (`share`: balanced by tokens), the full
weights are gathered on every rank and rank 0 hands them to the engines, and checkpoints are saved by all.
With one process nothing here talks to anyone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from forager.core import ForagerError

STOP = "stop"
"""What rank 0 broadcasts instead of samples when the run stops (Ctrl-C, SIGTERM): the other ranks end too."""


def init_process_group() -> bool:
    """Join the process group torchrun describes (`WORLD_SIZE` > 1): NCCL on GPUs, gloo on CPUs. True when this
    call created it (the caller destroys it); False with one process or a group already initialised."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ:
        raise ForagerError("WORLD_SIZE > 1 without MASTER_ADDR: launch multi-rank training with torchrun "
                           "(`torchrun --nproc_per_node N -m forager train ...`)")
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(payload: Any, world_size: int) -> Any:
    """Rank 0's `payload` on every rank (a picklable object; the others pass anything)."""
    if world_size == 1:
        return payload
    import torch.distributed as dist

    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share(samples: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's part of the batch: longest first, each to the rank with the fewest tokens so far (ties to the
    lowest rank), so the ranks' microbatches weigh about the same. Every sample goes to exactly one rank."""
    if world_size == 1:
        return list(samples)
    loads = [0] * world_size
    mine = []
    for index in sorted(range(len(samples)), key=lambda i: (-len(samples[i].token_ids), i)):
        target = min(range(world_size), key=lambda r: (loads[r], r))
        loads[target] += len(samples[index].token_ids)
        if target == rank:
            mine.append(samples[index])
    return mine
