"""Weights from the learner to the samplers: flat buckets broadcast over `torch.distributed`.

The learner (rank 0) and N samplers (ranks 1..N) form a process group of their own, built from a
`TCPStore` the learner hosts and a `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (GPUs) made directly
on it, so the learner's default group (FSDP's) is neither needed nor touched. The code is the same for
both backends; only the device of the buckets differs.

One sync: the weights are packed in state-dict order into flat buckets of one dtype each (about
`bucket_bytes`; a larger tensor gets a bucket of its own, and a tied weight travels once, its other
names as aliases). For each bucket the learner puts a small JSON header in the store (version, dtype,
element count, and each tensor's name, shape and offset), then broadcasts the bucket; a closing header
carries the aliases. Headers go through the store rather than a collective so that a sampler can wait
for the next sync for hours without a collective timing out. A sampler unpacks the buckets into
tensors, loads them between two generations, and acknowledges with an all-reduce (min) of the version
it now holds, -1 after a failure, whose reason it leaves in the store for the learner to report.
Only `bucket_bytes` of extra memory on the learner; the sampler holds one full copy until it loads.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from forager.core import ForagerError

DEFAULT_BUCKET_BYTES = 64 * 2**20
POLL_S = 0.05
"""How often the learner checks the store for samplers that joined or saw the group close."""
WAIT_S = 1.0
"""How long a sampler waits on the store for the next sync before it checks whether to stop (each timeout
logs a c10d warning unless TORCH_CPP_LOG_LEVEL=ERROR, which `RemoteEngine` sets for its process)."""


class SyncError(ForagerError):
    """A weight sync failed: a sampler could not load the weights, left the group, or timed out."""


@dataclass(frozen=True)
class SyncAddress:
    """Where a sampler joins the learner's weight group: what its process needs, as JSON."""

    host: str
    port: int
    world_size: int
    backend: str = "gloo"
    timeout_s: float = 1800.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SyncStats:
    """One sync, as the learner saw it."""

    version: int
    seconds: float
    """From the first header to every sampler's acknowledgement (their load included)."""
    transfer_s: float
    """From the first header to the last bucket broadcast."""
    bytes: int
    tensors: int
    buckets: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Bucket:
    """Tensors of one dtype laid end to end; `entries` say where each one starts."""

    dtype: Any
    tensors: list[Any] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    numel: int = 0

    def add(self, name: str, tensor: Any) -> None:
        self.entries.append({"name": name, "shape": list(tensor.shape), "offset": self.numel})
        self.tensors.append(tensor)
        self.numel += tensor.numel()

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def pack_buckets(weights: Mapping[str, Any] | Iterable[tuple[str, Any]], bucket_bytes: int,
                 aliases: dict[str, str]) -> Iterator[_Bucket]:
    """Buckets of one dtype each, filled in the order the weights come; a tied weight's later names go to `aliases`."""
    pairs = weights.items() if isinstance(weights, Mapping) else weights
    # A weak reference, so that memory a gathered tensor freed and a later one reuses is never taken for a tie.
    seen: dict[tuple[Any, ...], tuple[str, weakref.ref[Any]]] = {}
    open_buckets: dict[Any, _Bucket] = {}
    for name, tensor in pairs:
        key = (tensor.device, tensor.dtype, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        earlier = seen.get(key) if tensor.numel() else None
        if earlier is not None and earlier[1]() is not None:
            aliases[name] = earlier[0]
            continue
        seen[key] = (name, weakref.ref(tensor))
        bucket = open_buckets.get(tensor.dtype)
        size = tensor.numel() * tensor.element_size()
        if bucket is not None and bucket.numel and bucket.nbytes + size > bucket_bytes:
            yield open_buckets.pop(tensor.dtype)
            bucket = None
        if bucket is None:
            bucket = open_buckets[tensor.dtype] = _Bucket(tensor.dtype)
        bucket.add(name, tensor)
    yield from open_buckets.values()


def tensor_checksums(weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, str]:
    """A digest of each tensor's bytes (dtype and shape included): equal digests, bit-identical tensors."""
    import torch

    out = {}
    for name, tensor in (weights.items() if isinstance(weights, Mapping) else weights):
        flat = tensor.detach().contiguous().reshape(-1).cpu()
        digest = hashlib.sha256(f"{flat.dtype}{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
        out[name] = digest.hexdigest()[:16]
    return out


class WeightBroadcaster:
    """The learner's end: hosts the store, joins the group as rank 0, broadcasts each new version."""

    def __init__(self, samplers: int = 1, *, backend: str = "gloo", host: str = "127.0.0.1", port: int = 0,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, device: str | None = None,
                 timeout_s: float = 1800.0) -> None:
        import torch.distributed as dist

        if samplers < 1:
            raise SyncError(f"a weight group needs at least one sampler, not {samplers}")
        self.backend, self.bucket_bytes, self.timeout_s = _check_backend(backend), bucket_bytes, timeout_s
        self.device = _device(backend, device)
        self.store = dist.TCPStore(host, port, samplers + 1, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=timeout_s))
        self.address = SyncAddress(host, self.store.port, samplers + 1, backend, timeout_s)
        self.group: Any = None
        self._seq = 0
        self.last: SyncStats | None = None
        """The last sync that reached every sampler: its version is the one the whole group holds."""
        self.broken: str | None = None
        """Why the group can take no more syncs (a sampler died, or a sync stopped halfway)."""

    def connect(self, check: Callable[[], None] | None = None) -> None:
        """Join the group once every sampler is joining; `check` raises if a sampler has died meanwhile."""
        if self.group is not None:
            return
        ranks = [f"joined/{rank}" for rank in range(1, self.address.world_size)]
        deadline = time.monotonic() + self.timeout_s
        while not self.store.check(ranks):
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise SyncError(f"samplers did not join the weight group within {self.timeout_s:.0f} s")
            time.sleep(POLL_S)
        self.group = _open_group(self.address, self.store, rank=0)

    def broadcast(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]], version: int) -> SyncStats:
        """Send every weight to every sampler; returns once all of them hold `version` (or raises SyncError)."""
        if version < 0:
            raise SyncError(f"policy versions count up from 0, not {version}")
        if self.store is None or self.broken is not None:
            raise SyncError(f"the weight broadcaster is {self.broken or 'closed'}: restart the samplers")
        self.connect()
        seq, started = self._seq, time.monotonic()
        self._seq += 1
        try:
            sent, tensors, buckets, aliases = self._send(seq, weights, version)
            transfer_s = time.monotonic() - started
            held = self._acknowledged(version)
        except BaseException as err:  # the samplers are left mid-sync (or one died): the group is unusable
            self.broken = f"broken since version {version} failed ({type(err).__name__}: {err})"
            if isinstance(err, RuntimeError):  # a collective failed: a sampler died or timed out
                raise SyncError(f"the weight group {self.broken}: restart the samplers") from err
            raise
        for index in range(buckets + 1):
            self.store.delete_key(f"{seq}/{index}")
        if held != version:
            raise SyncError(f"version {version} did not reach every sampler: {self._errors(seq)}")
        self.last = SyncStats(version, time.monotonic() - started, transfer_s, sent, tensors + aliases, buckets)
        return self.last

    def _send(self, seq: int, weights: Mapping[str, Any] | Iterable[tuple[str, Any]],
              version: int) -> tuple[int, int, int, int]:
        """Headers into the store and buckets over the group: (bytes, tensors, buckets, aliases) sent."""
        aliases: dict[str, str] = {}
        sent = tensors = buckets = 0
        for index, bucket in enumerate(pack_buckets(weights, self.bucket_bytes, aliases)):
            header = {"version": version, "dtype": str(bucket.dtype).removeprefix("torch."), "numel": bucket.numel,
                      "tensors": bucket.entries}
            self.store.set(f"{seq}/{index}", json.dumps(header))
            _broadcast(self.group, _flatten(bucket, self.device))
            sent, tensors, buckets = sent + bucket.nbytes, tensors + len(bucket.entries), buckets + 1
        self.store.set(f"{seq}/{buckets}", json.dumps({"version": version, "end": True, "aliases": aliases}))
        return sent, tensors, buckets, len(aliases)

    def _acknowledged(self, version: int) -> int:
        """The lowest version the samplers hold now (-1 when one failed to load)."""
        import torch

        held = torch.tensor([version], dtype=torch.int64, device=self.device)
        _all_reduce_min(self.group, held)
        return int(held.item())

    def close(self, wait_s: float = 5.0) -> None:
        """Tell the samplers the group ends, so they stop waiting for syncs; idempotent."""
        if self.store is None:
            return
        try:
            self.store.set(f"{self._seq}/0", json.dumps({"close": True}))
            # The store lives in this process: keep it up until the samplers have read the news.
            ranks = [f"closed/{rank}" for rank in range(1, self.address.world_size)]
            deadline = time.monotonic() + wait_s
            while (self.group is not None and self.broken is None and not self.store.check(ranks)
                   and time.monotonic() < deadline):
                time.sleep(POLL_S)
        finally:
            self.group, self.store = None, None

    def _errors(self, seq: int) -> str:
        found = []
        for rank in range(1, self.address.world_size):
            key = f"{seq}/error/{rank}"
            if self.store.check([key]):
                found.append(f"sampler {rank}: {self.store.get(key).decode()}")
                self.store.delete_key(key)
        return "; ".join(found) or "a sampler reported no reason"


class WeightReceiver:
    """A sampler's end: joins the learner's group and receives each new version as (name, tensor) pairs."""

    def __init__(self, address: SyncAddress, rank: int, device: str | None = None) -> None:
        import torch.distributed as dist

        self.address, self.rank = address, rank
        self.device = _device(address.backend, device)
        self.store = dist.TCPStore(address.host, address.port, address.world_size, is_master=False,
                                   timeout=timedelta(seconds=address.timeout_s))
        self.store.set(f"joined/{rank}", b"1")
        self.group = _open_group(address, self.store, rank=rank)
        self._seq = 0

    def receive(self, stopped: Callable[[], bool] = lambda: False) -> tuple[int, list[tuple[str, Any]]] | None:
        """The next version and its weights (on this device), or None when the learner closed the group or `stopped()`."""
        import torch
        import torch.distributed as dist

        first = f"{self._seq}/0"
        while not self.store.check([first]):
            if stopped():
                return None
            try:  # the store wakes the wait as soon as the key is set
                self.store.wait([first], timedelta(seconds=WAIT_S))
            except dist.DistStoreError:  # a timeout: check `stopped` and wait again
                pass
        pairs: list[tuple[str, Any]] = []
        for index in itertools.count():
            header = json.loads(self.store.get(f"{self._seq}/{index}"))
            if header.get("close"):
                self.store.set(f"closed/{self.rank}", b"1")
                return None
            if header.get("end"):
                by_name = dict(pairs)
                pairs += [(name, by_name[target]) for name, target in header["aliases"].items()]
                return int(header["version"]), pairs
            flat = torch.empty(header["numel"], dtype=getattr(torch, header["dtype"]), device=self.device)
            _broadcast(self.group, flat)
            for entry in header["tensors"]:
                numel = _numel(entry["shape"])
                pairs.append((entry["name"], flat[entry["offset"]: entry["offset"] + numel].view(entry["shape"])))
        raise AssertionError("itertools.count() ended")

    def acknowledge(self, version: int, error: str | None = None) -> None:
        """Tell the learner this sampler now holds `version`, or why it does not (`error`)."""
        import torch

        if error is not None:
            self.store.set(f"{self._seq}/error/{self.rank}", error[-2000:])
        held = torch.tensor([-1 if error is not None else version], dtype=torch.int64, device=self.device)
        _all_reduce_min(self.group, held)
        self._seq += 1


def _open_group(address: SyncAddress, store: Any, rank: int) -> Any:
    """A process group of the learner and the samplers on `store`, apart from any default group."""
    import torch
    import torch.distributed as dist

    prefixed = dist.PrefixStore("group", store)
    timeout = timedelta(seconds=address.timeout_s)
    if address.backend == "nccl":
        if not torch.cuda.is_available():
            raise SyncError("the nccl weight group needs CUDA: use backend gloo on the CPU")
        group = dist.ProcessGroupNCCL(prefixed, rank, address.world_size, timeout)
    else:
        group = dist.ProcessGroupGloo(prefixed, rank, address.world_size, timeout)
    # NCCL connects at its first collective and gloo at construction: either way every rank is in after this.
    check = torch.zeros(1, device=_device(address.backend, None))
    _all_reduce_min(group, check)
    return group


def _broadcast(group: Any, tensor: Any) -> None:
    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor], options).wait()


def _all_reduce_min(group: Any, tensor: Any) -> None:
    import torch.distributed as dist

    options = dist.AllreduceOptions()
    options.reduceOp = dist.ReduceOp.MIN
    group.allreduce([tensor], options).wait()


def _flatten(bucket: _Bucket, device: Any) -> Any:
    """The bucket as one flat tensor on `device`; a lone contiguous tensor already there is sent as it is."""
    import torch

    if len(bucket.tensors) == 1 and bucket.tensors[0].is_contiguous() and bucket.tensors[0].device == device:
        return bucket.tensors[0].detach().reshape(-1)
    flat = torch.empty(bucket.numel, dtype=bucket.dtype, device=device)
    for entry, tensor in zip(bucket.entries, bucket.tensors):
        flat[entry["offset"]: entry["offset"] + tensor.numel()].copy_(tensor.detach().reshape(-1))
    return flat


def _device(backend: str, device: str | None) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_backend(backend: str) -> str:
    if backend not in ("gloo", "nccl"):
        raise SyncError(f"unknown weight-sync backend {backend!r}: use gloo (CPU) or nccl (GPUs)")
    return backend


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
