"""The learner's memory planner: bytes per GPU for a decoder-only model trained with FSDP2 and AdamW.

For a model described by its architecture (a table of known ones, or a Hugging Face `config.json`),
sharded by FSDP2 over N GPUs (one unit per decoder layer, plus the root unit holding the embeddings,
the final norm and the LM head), with P parameters, L layers, hidden size h, H query and K key/value
heads of size d, MLP width I, vocabulary V, and t = microbatch_tokens / sequence_parallel tokens on a GPU:

    parameter shards      P * param_bytes / N
    gradient shards       P * grad_bytes / N
    optimizer state       P * (master_bytes + moment_bytes) / N     AdamW's two moments, and an fp32 master copy
                                                                    when the shards are not fp32
    gathered parameters   (root + 2 * layer) * compute_bytes        the root stays gathered (FSDP2 does not
                                                                    reshard it after forward); the current layer
                                                                    and the prefetched one (counted whatever N:
                                                                    an upper estimate on one GPU)
    unsharded gradients   max(root, layer) * reduce_bytes           one unit's full gradient before its reduce-scatter
    activations           t * (L * h + A) * compute_bytes           with activation checkpointing: each layer's input,
                                                                    plus one layer recomputed in backward
                          t * L * A * compute_bytes                 without it
    logits                t * V * (compute_bytes + 4)               the logits and their fp32 log-softmax
    reserve               reserve_gib                               CUDA context, NCCL buffers, allocator fragmentation

where A = 4h + 2Hd + 2Kd + 4I elements per token per layer are what one decoder layer saves for backward
with a fused (flash) attention: the inputs of the two norms and of the projections they feed (4h), q
and the attention output (2Hd), k and v (2Kd), and the MLP's gate, up, activation and product (4I).
With CPU offload (FSDP2's CPUOffloadPolicy) the shards, gradients and optimizer state live in host
memory instead. Estimates in the manner of the ZeRO paper's model-state accounting (Rajbhandari et
al. 2020) and Korthikanti et al. 2022's activation accounting, specialised to SwiGLU and GQA.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forager.core import ForagerError

if TYPE_CHECKING:
    from forager.train.config import TrainConfig

GIB = 2**30
DEFAULT_RESERVE_GIB = 4.0
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PlanError(ForagerError):
    """The planner cannot describe this model (an unknown name, a config.json it cannot read)."""


@dataclass(frozen=True)
class Architecture:
    """What sets a dense decoder-only transformer's size (Llama/Qwen layout: GQA attention, SwiGLU MLP, RMSNorm)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    head_dim: int = 0
    """0: hidden_size / num_heads (Qwen3 sets it apart)."""
    qkv_bias: bool = False
    """Biases on the q, k and v projections (Qwen2 and Qwen2.5)."""
    qk_norm: bool = False
    """RMSNorm on each head's queries and keys (Qwen3)."""

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def layer_params(self) -> int:
        """One decoder layer: q, k, v, o projections (+ biases, + q/k norms), the SwiGLU MLP, two RMSNorms."""
        h, d = self.hidden_size, self.head_size
        q, kv = self.num_heads * d, self.num_kv_heads * d
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0) + (2 * d if self.qk_norm else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h

    def root_params(self) -> int:
        """What is outside the decoder layers: the embeddings, the LM head unless tied, the final norm."""
        embedding = self.vocab_size * self.hidden_size
        return embedding * (1 if self.tied_embeddings else 2) + self.hidden_size

    def params(self) -> int:
        return self.num_layers * self.layer_params() + self.root_params()

    def saved_per_token_layer(self) -> int:
        """A: elements one layer keeps for backward per token (see the module docstring)."""
        h, d = self.hidden_size, self.head_size
        return 4 * h + 2 * self.num_heads * d + 2 * self.num_kv_heads * d + 4 * self.intermediate_size

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str = "") -> Architecture:
        """From a transformers `config.json` (Llama, Qwen2, Qwen3, Mistral, SmolLM and other dense layouts)."""
        config = config.get("text_config", config) if "hidden_size" not in config else config
        if any(key in config for key in ("num_experts", "num_local_experts", "n_routed_experts")):
            raise PlanError(f"{name or 'this model'} is a mixture of experts; the planner covers dense models only")
        try:
            heads = int(config["num_attention_heads"])
            model_type = str(config.get("model_type", ""))
            return cls(
                name=name or str(config.get("_name_or_path") or model_type or "model"),
                hidden_size=int(config["hidden_size"]), num_layers=int(config["num_hidden_layers"]),
                num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
                intermediate_size=int(config["intermediate_size"]), vocab_size=int(config["vocab_size"]),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                head_dim=int(config.get("head_dim") or 0),
                qkv_bias=bool(config.get("attention_bias", model_type in ("qwen2",))),
                qk_norm=model_type == "qwen3",
            )
        except KeyError as err:
            raise PlanError(f"config of {name or 'the model'} lacks {err.args[0]!r}: is it a decoder-only "
                            "transformer's config.json?") from err


KNOWN_ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch for arch in (
        Architecture("Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, tied_embeddings=False, qkv_bias=True),
        Architecture("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, tied_embeddings=False, qkv_bias=True),
        Architecture("Qwen3-32B", 5120, 64, 64, 8, 25600, 151936, tied_embeddings=False, head_dim=128, qk_norm=True),
        Architecture("Llama-3-8B", 4096, 32, 32, 8, 14336, 128256, tied_embeddings=False),
        Architecture("SmolLM2-135M", 576, 30, 9, 3, 1536, 49152, tied_embeddings=True),
    )
}
"""The dimensions from each model's published config.json."""
_ALIASES = {"meta-llama-3-8b": "Llama-3-8B", "llama-3.1-8b": "Llama-3-8B", "meta-llama-3.1-8b": "Llama-3-8B",
            "qwen2.5-coder-32b": "Qwen2.5-32B", "qwen2.5-coder-7b": "Qwen2.5-7B"}
"""Other names of the same shapes (the instruct and coder variants keep the base model's dimensions)."""


def load_architecture(spec: str | Path) -> Architecture:
    """A known name or hub id (`Qwen/Qwen2.5-32B-Instruct`, `smollm2-135m-instruct`), a model directory,
    or the path of a `config.json`."""
    path = Path(spec).expanduser()
    if path.exists():
        file = path / "config.json" if path.is_dir() else path
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise PlanError(f"cannot read the model config {file}: {err}") from err
        return Architecture.from_hf_config(config, name=path.name if path.is_dir() else path.parent.name)
    key = str(spec).rsplit("/", 1)[-1].lower().removesuffix("-instruct")
    names = {name.lower(): name for name in KNOWN_ARCHITECTURES} | _ALIASES
    if key not in names:
        raise PlanError(f"unknown architecture {str(spec)!r}: known are {', '.join(KNOWN_ARCHITECTURES)}; "
                        "otherwise give the model's directory or its config.json")
    return KNOWN_ARCHITECTURES[names[key]]


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of state. The default: FSDP2 with fp32 shards that AdamW updates
    directly, bf16 compute, fp32 gradient reduction (16 bytes of state per parameter)."""

    param_bytes: int = 4
    """The sharded parameters."""
    grad_bytes: int = 4
    """The sharded gradients (the shards' dtype)."""
    master_bytes: int = 0
    """An fp32 master copy, needed when the shards are in 16 bits."""
    moment_bytes: int = 8
    """AdamW's two moments (fp32 each)."""
    compute_bytes: int = 2
    """Gathered parameters and activations."""
    reduce_bytes: int = 4
    """A unit's unsharded gradient before reduce-scatter."""

    @classmethod
    def bf16_params_fp32_optimizer(cls) -> Precision:
        """bf16 parameters and gradients, fp32 master copy and moments (the classic mixed-precision 16 bytes)."""
        return cls(param_bytes=2, grad_bytes=2, master_bytes=4, moment_bytes=8, compute_bytes=2, reduce_bytes=4)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU, by kind, for one learner layout; `host` is what CPU offload keeps in RAM per GPU."""

    architecture: Architecture
    gpus: int
    microbatch_tokens: int
    sequence_parallel: int
    activation_checkpointing: bool
    cpu_offload: bool
    precision: Precision
    params: float
    grads: float
    optimizer: float
    gathered: float
    unsharded_grads: float
    activations: float
    logits: float
    reserve: float
    host: float
    per_token: float = field(repr=False)
    """Activation and logit bytes per token on one GPU: the part that grows with the microbatch."""

    @property
    def total(self) -> float:
        return (self.params + self.grads + self.optimizer + self.gathered + self.unsharded_grads
                + self.activations + self.logits + self.reserve)

    def fits(self, gpu_memory_gib: float) -> bool:
        return self.total <= gpu_memory_gib * GIB

    def max_microbatch_tokens(self, gpu_memory_gib: float) -> int:
        """The largest microbatch (over its sequence-parallel group) that still fits, 0 if none does."""
        fixed = self.total - self.activations - self.logits
        room = gpu_memory_gib * GIB - fixed
        return max(0, math.floor(room / self.per_token)) * self.sequence_parallel

    def render(self, gpu_memory_gib: float | None = None) -> str:
        """A readable table of the breakdown (GiB), with whether it fits when a GPU size is given."""
        arch, p = self.architecture, self.precision
        where, share = ("host", arch.params() / self.gpus) if self.cpu_offload else ("GPU", 0.0)
        rows = [
            (f"parameter shards ({p.param_bytes} B/param, on {where})", self.params, share * p.param_bytes),
            (f"gradient shards ({p.grad_bytes} B/param, on {where})", self.grads, share * p.grad_bytes),
            (f"AdamW state (master {p.master_bytes} B + moments {p.moment_bytes} B)", self.optimizer,
             share * (p.master_bytes + p.moment_bytes)),
            (f"gathered parameters (root + 2 layers, {p.compute_bytes} B)", self.gathered, 0.0),
            (f"unsharded gradients (largest unit, {p.reduce_bytes} B)", self.unsharded_grads, 0.0),
            ("activations (" + ("checkpointed" if self.activation_checkpointing else "all layers kept") + ")",
             self.activations, 0.0),
            (f"logits ({p.compute_bytes} B + fp32 log-softmax)", self.logits, 0.0),
            ("reserve (CUDA context, NCCL, fragmentation)", self.reserve, 0.0),
        ]
        per_gpu = self.microbatch_tokens / self.sequence_parallel
        lines = [
            f"{arch.name}: {arch.params() / 1e9:.3f} B parameters, FSDP2 over {self.gpus} GPU(s), "
            f"{self.microbatch_tokens:,} tokens per microbatch ({per_gpu:,.0f} per GPU, sequence parallel "
            f"{self.sequence_parallel})",
            f"{'':52}{'GPU GiB':>10}{'host GiB':>10}",
        ]
        lines += [f"{label:52}{gpu / GIB:10.2f}{host / GIB:10.2f}" for label, gpu, host in rows]
        lines.append(f"{'total per GPU':52}{self.total / GIB:10.2f}{self.host / GIB:10.2f}")
        if gpu_memory_gib is not None:
            verdict = "fits" if self.fits(gpu_memory_gib) else "does NOT fit"
            spare = gpu_memory_gib - self.total / GIB
            lines.append(f"{verdict} in {gpu_memory_gib:g} GiB ({spare:+.2f} GiB to spare); largest microbatch "
                         f"that fits: {self.max_microbatch_tokens(gpu_memory_gib):,} tokens")
        return "\n".join(lines)


def plan_memory(
    architecture: Architecture | str | Path, *, gpus: int, microbatch_tokens: int, precision: Precision | None = None,
    activation_checkpointing: bool = True, cpu_offload: bool = False, sequence_parallel: int = 1,
    reserve_gib: float = DEFAULT_RESERVE_GIB,
) -> MemoryPlan:
    """The per-GPU memory of training `architecture` with FSDP2 over `gpus` GPUs (formulas: module docstring)."""
    arch = architecture if isinstance(architecture, Architecture) else load_architecture(architecture)
    if gpus < 1 or microbatch_tokens < 1 or sequence_parallel < 1 or gpus % sequence_parallel:
        raise PlanError(f"need gpus >= 1, microbatch_tokens >= 1 and sequence_parallel dividing gpus; got gpus={gpus}, "
                        f"microbatch_tokens={microbatch_tokens}, sequence_parallel={sequence_parallel}")
    p = precision or Precision()
    total_params = arch.params()
    params, grads = total_params * p.param_bytes / gpus, total_params * p.grad_bytes / gpus
    optimizer = total_params * (p.master_bytes + p.moment_bytes) / gpus
    layer, root = arch.layer_params(), arch.root_params()
    tokens = microbatch_tokens / sequence_parallel
    saved = arch.num_layers * arch.hidden_size + arch.saved_per_token_layer() if activation_checkpointing \
        else arch.num_layers * arch.saved_per_token_layer()
    per_token = saved * p.compute_bytes + arch.vocab_size * (p.compute_bytes + 4)
    host = params + grads + optimizer if cpu_offload else 0.0
    return MemoryPlan(
        architecture=arch, gpus=gpus, microbatch_tokens=microbatch_tokens, sequence_parallel=sequence_parallel,
        activation_checkpointing=activation_checkpointing, cpu_offload=cpu_offload, precision=p,
        params=0.0 if cpu_offload else params, grads=0.0 if cpu_offload else grads,
        optimizer=0.0 if cpu_offload else optimizer,
        gathered=float((root + 2 * layer) * p.compute_bytes), unsharded_grads=float(max(root, layer) * p.reduce_bytes),
        activations=tokens * saved * p.compute_bytes, logits=tokens * arch.vocab_size * (p.compute_bytes + 4),
        reserve=reserve_gib * GIB, host=host, per_token=float(per_token),
    )


def plan_from_config(config: TrainConfig, reserve_gib: float = DEFAULT_RESERVE_GIB) -> MemoryPlan:
    """The plan of a training config's learner: its model, GPUs, microbatch and FSDP2 settings.

    The shards are fp32 (AdamW updates them directly, no master copy), gathered in `fsdp.param_dtype`,
    gradients reduced in `fsdp.reduce_dtype`. A CPU learner (`num_gpus` 0) is planned as one device.
    """
    fsdp = config.learner.fsdp
    precision = replace(Precision(), compute_bytes=DTYPE_BYTES[fsdp.param_dtype],
                        reduce_bytes=DTYPE_BYTES[fsdp.reduce_dtype])
    return plan_memory(
        config.model.path, gpus=max(config.learner.num_gpus, 1), microbatch_tokens=config.learner.microbatch_tokens,
        precision=precision, activation_checkpointing=fsdp.activation_checkpointing, cpu_offload=fsdp.cpu_offload,
        sequence_parallel=config.learner.sequence_parallel, reserve_gib=reserve_gib,
    )


# -- choosing a layout: how many GPUs the learner and the samplers need --------------------------------
@dataclass(frozen=True)
class SamplerPlan:
    """vLLM engines for the rollout: tensor parallel size, engines, and what one GPU holds."""

    tensor_parallel: int
    engines: int
    weights_gib_per_gpu: float
    kv_gib_per_gpu: float
    episodes_per_engine: int
    """Episodes of `episode_tokens` whose KV cache one engine holds at once."""

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.engines


@dataclass(frozen=True)
class Layout:
    """A whole run's GPUs: the learner's (FSDP2, sequence parallel) and the samplers'."""

    learner: MemoryPlan
    samplers: SamplerPlan

    @property
    def gpus(self) -> int:
        return self.learner.gpus + self.samplers.gpus

    def render(self, gpu_memory_gib: float) -> str:
        s = self.samplers
        return "\n".join([
            self.learner.render(gpu_memory_gib),
            f"samplers: {s.engines} vLLM engine(s) x tensor parallel {s.tensor_parallel} = {s.gpus} GPUs; per GPU "
            f"{s.weights_gib_per_gpu:.1f} GiB of bf16 weights and {s.kv_gib_per_gpu:.1f} GiB of KV cache, "
            f"{s.episodes_per_engine} full episodes per engine",
            f"total: {self.gpus} GPUs ({self.learner.gpus} learner + {s.gpus} samplers)"])


def choose_learner(architecture: Architecture | str | Path, *, gpu_memory_gib: float, microbatch_tokens: int,
                   precision: Precision | None = None, activation_checkpointing: bool = True,
                   gpus_per_node: int = 8, max_gpus: int = 1024,
                   reserve_gib: float = DEFAULT_RESERVE_GIB) -> MemoryPlan:
    """The fewest learner GPUs (whole nodes past one node) and, for those, the least sequence parallelism
    (within a node, where Ulysses' all-to-all is fast) at which one microbatch of `microbatch_tokens` fits."""
    counts = [n for n in (1, 2, 4) if n < gpus_per_node] + list(range(gpus_per_node, max_gpus + 1, gpus_per_node))
    for gpus in counts:
        for sp in (1, 2, 4, 8, 16):
            if sp > min(gpus, gpus_per_node) or gpus % sp:
                continue
            plan = plan_memory(architecture, gpus=gpus, microbatch_tokens=microbatch_tokens, precision=precision,
                               activation_checkpointing=activation_checkpointing, sequence_parallel=sp,
                               reserve_gib=reserve_gib)
            if plan.fits(gpu_memory_gib):
                return plan
    raise PlanError(f"no layout of up to {max_gpus} GPUs of {gpu_memory_gib:g} GiB fits a microbatch of "
                    f"{microbatch_tokens:,} tokens: lower learner.microbatch_tokens or turn on fsdp.cpu_offload")


def choose_samplers(architecture: Architecture | str | Path, *, gpu_memory_gib: float, episode_tokens: int,
                    episodes_in_flight: int, gpu_memory_utilization: float = 0.9, weight_bytes: int = 2,
                    kv_bytes: int = 2, overhead_gib: float = 2.0, gpus_per_node: int = 8) -> SamplerPlan:
    """The tensor parallel size and engine count that hold `episodes_in_flight` episodes of `episode_tokens` (their
    KV cache, beside each GPU's share of the weights) on the fewest GPUs.

    KV cache per token: 2 (k and v) x layers x kv heads x head size x `kv_bytes`; `overhead_gib` per GPU is vLLM's
    activations and CUDA graphs. Episodes rarely use the whole context, so `episode_tokens` at the context length
    is the worst case."""
    arch = architecture if isinstance(architecture, Architecture) else load_architecture(architecture)
    weights = arch.params() * weight_bytes
    kv_per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_size * kv_bytes
    best: SamplerPlan | None = None
    for tp in (1, 2, 4, 8, 16):
        if tp > gpus_per_node or (arch.num_kv_heads % tp and tp % arch.num_kv_heads):
            continue
        free = gpu_memory_gib * gpu_memory_utilization * GIB - weights / tp - overhead_gib * GIB
        episodes = math.floor(free * tp / (kv_per_token * episode_tokens)) if free > 0 else 0
        if episodes < 1:
            continue
        plan = SamplerPlan(tp, math.ceil(episodes_in_flight / episodes), weights / tp / GIB, free / GIB, episodes)
        if best is None or plan.gpus < best.gpus:  # the fewest GPUs in all; a tie keeps the smaller engines
            best = plan
    if best is None:
        raise PlanError(f"{arch.name} does not fit one {episode_tokens:,}-token episode on {gpus_per_node} GPUs of "
                        f"{gpu_memory_gib:g} GiB")
    return best


def choose_layout(architecture: Architecture | str | Path, *, gpu_memory_gib: float, microbatch_tokens: int,
                  episode_tokens: int, episodes_in_flight: int, **learner_options: Any) -> Layout:
    """`choose_learner` and `choose_samplers` together: the GPUs a run of this model and these budgets needs."""
    arch = architecture if isinstance(architecture, Architecture) else load_architecture(architecture)
    return Layout(choose_learner(arch, gpu_memory_gib=gpu_memory_gib, microbatch_tokens=microbatch_tokens,
                                 **learner_options),
                  choose_samplers(arch, gpu_memory_gib=gpu_memory_gib, episode_tokens=episode_tokens,
                                  episodes_in_flight=episodes_in_flight))
