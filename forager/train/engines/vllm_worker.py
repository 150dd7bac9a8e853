"""The weight-update side of a vLLM sampler: a worker extension the learner drives through `/collective_rpc`.

    vllm serve MODEL --worker-extension-cls forager.train.engines.vllm_worker:WeightSyncExtension
    (with VLLM_SERVER_DEV_MODE=1, which exposes /collective_rpc, /pause and /resume)

vLLM mixes this class into each of its GPU workers (one per tensor-parallel rank), so its methods run in
the worker process beside the model, between two engine steps, and `POST /collective_rpc {"method": ...}`
calls one on every worker of the server at once. vLLM passes only strings over HTTP, so each method takes
one JSON string. Three ways in, one way out (`model_runner.model.load_weights`, vLLM's own loader, which
takes the learner's transformers names and fuses q/k/v and gate/up itself):

- `forager_join` then `forager_receive`: the learner's weight group (`forager.train.sync`): rank
  `rank_offset + worker rank` of a NCCL group on GPUs (gloo on CPUs), buckets broadcast by the learner's rank 0;
- `forager_load_from_disk`: a safetensors file the learner wrote where both can read (no group possible);
- `forager_load_ipc`: CUDA IPC handles of the learner's tensors on the same GPU (colocated learner and sampler).

Each keeps `forager_version`, the policy version the worker holds, which `forager_state` reports, so the
trainer can tell a server at another version from one that just started. The test server
(`forager.testing.openai_server`) mixes the same class into its worker over a transformers model, so
everything here but NCCL itself runs in the CPU tests.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
import traceback
from typing import Any

from forager.train.sync import SyncAddress, WeightReceiver, tensor_checksums


class WeightSyncExtension:
    """Mixed into a vLLM worker (`self.model_runner.model`, `self.device`, `self.rank` are the worker's)."""

    forager_version: int = 0
    forager_syncs: int = 0
    forager_error: str | None = None
    forager_load_s: float = 0.0
    _forager_receiver: WeightReceiver | None = None

    # -- the learner's group -------------------------------------------------------------------
    def forager_join(self, spec: str) -> dict[str, Any]:
        """Join the learner's weight group as rank `rank_offset` + this worker's rank; returns once every rank is in."""
        request = json.loads(spec)
        address = SyncAddress(**request["address"])
        rank = int(request["rank_offset"]) + self._forager_rank()
        if self._forager_receiver is not None:
            self.forager_leave()
        self._forager_receiver = WeightReceiver(address, rank, device=str(self.device))
        if "version" in request:
            self.forager_version = int(request["version"])
        return {"rank": rank, "device": str(self.device)}

    def forager_receive(self, spec: str = "{}") -> dict[str, Any]:
        """Take the next version the learner broadcasts, load it, and acknowledge it (or the error) to the group."""
        receiver = self._forager_receiver
        if receiver is None:
            return {"error": "this worker has not joined a weight group (forager_join first)"}
        update = receiver.receive()
        if update is None:
            self.forager_leave()
            return {"closed": True}
        version, pairs = update
        try:
            self._forager_load(pairs, version)
        except Exception as err:  # noqa: BLE001 - acknowledged as a failure; the learner raises with this text
            self.forager_error = f"{type(err).__name__}: {err}"
            traceback.print_exc()
            receiver.acknowledge(version, error=self.forager_error)
            return {"error": self.forager_error}
        receiver.acknowledge(version)
        return {"version": version, "tensors": len(pairs), "load_s": self.forager_load_s}

    def forager_leave(self, spec: str = "{}") -> dict[str, Any]:
        """Forget the weight group (the learner closed it, or a new one replaces it)."""
        self._forager_receiver = None
        return {"left": True}

    # -- without a group -----------------------------------------------------------------------
    def forager_load_from_disk(self, spec: str) -> dict[str, Any]:
        """Load `path` (a safetensors file of the learner's weights by name) as policy `version`."""
        from safetensors.torch import load_file

        request = json.loads(spec)
        try:
            weights = load_file(request["path"], device=str(self.device))
            self._forager_load(list(weights.items()), int(request["version"]))
        except Exception as err:  # noqa: BLE001 - returned to the learner, which raises EngineError with it
            self.forager_error = f"{type(err).__name__}: {err}"
            return {"error": self.forager_error}
        return {"version": self.forager_version, "tensors": len(weights), "load_s": self.forager_load_s}

    def forager_load_ipc(self, spec: str) -> dict[str, Any]:
        """Load tensors shared by CUDA IPC handles (`ipc_payload` on the learner's side) as policy `version`.

        The handles are pickled rebuild calls, as torch.multiprocessing sends CUDA tensors between processes:
        the same trust as `/collective_rpc` itself, which only a dev-mode server exposes to its trainer."""
        request = json.loads(spec)
        try:
            entries = pickle.loads(base64.b64decode(request["handles"]))  # noqa: S301 - the learner's own handles
            device_index = getattr(self.device, "index", None)
            pairs = []
            for name, (rebuild, args) in entries:
                args = list(args)
                if device_index is not None:
                    args[6] = device_index  # the handle's device, as this worker numbers it
                pairs.append((name, rebuild(*args)))
            self._forager_load(pairs, int(request["version"]))
        except Exception as err:  # noqa: BLE001 - returned to the learner
            self.forager_error = f"{type(err).__name__}: {err}"
            return {"error": self.forager_error}
        return {"version": self.forager_version, "tensors": len(pairs), "load_s": self.forager_load_s}

    # -- inspection ----------------------------------------------------------------------------
    def forager_state(self, spec: str = "{}") -> dict[str, Any]:
        """The version this worker holds, the syncs it took, its rank, and why the last one failed (if it did)."""
        return {"version": self.forager_version, "syncs": self.forager_syncs, "error": self.forager_error,
                "rank": self._forager_rank(), "load_s": self.forager_load_s,
                "joined": self._forager_receiver is not None}

    def forager_checksums(self, spec: str = "{}") -> dict[str, str]:
        """A digest per tensor of the served model, by the server's own names (vLLM's are fused: qkv_proj)."""
        return tensor_checksums(self.model_runner.model.state_dict())

    # -- inside ----------------------------------------------------------------------------------
    def _forager_load(self, pairs: list[tuple[str, Any]], version: int) -> None:
        started = time.monotonic()
        self.model_runner.model.load_weights(pairs)
        self.forager_version, self.forager_syncs, self.forager_error = version, self.forager_syncs + 1, None
        self.forager_load_s = time.monotonic() - started

    def _forager_rank(self) -> int:
        return int(getattr(self, "rank", 0) or 0)


def ipc_payload(weights: list[tuple[str, Any]], version: int) -> str:
    """The JSON argument of `forager_load_ipc`: CUDA IPC handles of the learner's tensors, which must be contiguous
    and stay alive (the caller holds `weights`) until every server has loaded them."""
    import torch
    from torch.multiprocessing.reductions import reduce_tensor

    entries = []
    for name, tensor in weights:
        if not tensor.is_cuda:
            raise ValueError(f"CUDA IPC shares GPU tensors only; {name} is on {tensor.device}: use sync method "
                             "nccl, gloo or disk")
        if not tensor.is_contiguous():
            raise ValueError(f"{name} is not contiguous: pass contiguous tensors, kept alive by the caller")
        entries.append((name, reduce_tensor(tensor.detach())))
    torch.cuda.synchronize()  # the values are written before another process reads them
    return json.dumps({"version": version, "handles": base64.b64encode(pickle.dumps(entries)).decode()})


__all__ = ["WeightSyncExtension", "ipc_payload"]
