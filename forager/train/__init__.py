"""Asynchronous multi-turn GRPO: turning trajectories into weight updates of the policy.

The package will hold the whole trainer: rollout workers that run episodes with the ForagerAgent
against inference engines, a learner that shards the policy with torch FSDP2 and applies the loss,
weight syncing from learner to engines while episodes are in flight, and the loop with its
checkpoints. The rooms that exist so far:

- `loss`: the GRPO loss and group advantages, CWM's variant by default (pure functions on torch tensors).
- `config` and `sections`: `TrainConfig`, loaded from YAML plus dotted overrides (`learner.lr=1e-6`).
- `plan`: the learner's memory per GPU under FSDP2 for a model's architecture, and whether it fits.
- `learner`: the `Learner` (FSDP2 over ranks, one rank plain), its GRPO step on `TrainSample`s (`samples`:
  the samples, their checks, their packing into microbatches and the recomputed logprobs).
- `checkpoint`: save and resume with torch.distributed.checkpoint, atomically, the last K kept.
- `engines/` and `sync`: sampling backends whose weights the learner replaces between two generations
  (in process, or a sampler process fed by bucketed torch.distributed broadcasts).
- `rollout` (`ray_rollout`, `cursor`), `buffer` and `metrics`: groups of G episodes per task through the
  agent loop, the staleness-bounded buffer of token-budget batches, `metrics.jsonl` and TensorBoard.

- `loop`: the training loop (`train(config, out_dir)`), resumable from its checkpoints; `forager train` runs it.

Nothing is imported here: `loss`, `learner`, `checkpoint`, `engines` and `sync` need torch, and the config must load without it.
"""
