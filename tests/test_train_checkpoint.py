"""Checkpoints with torch.distributed.checkpoint: resume equals the uninterrupted run, torn checkpoints are
ignored, only the last K stay, and a checkpoint saved by two FSDP2 ranks loads on one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from forager.train.checkpoint import (  # noqa: E402
    CheckpointError,
    checkpoint_path,
    complete_checkpoints,
    latest,
    load,
    save,
)
from forager.train.learner import Learner  # noqa: E402
from forager.train.sections import OptimizerConfig  # noqa: E402
from tests.test_train_learner import build_tiny_llama, learner_config, make_samples  # noqa: E402

SCHEDULE = OptimizerConfig(schedule="linear", warmup_steps=1, min_lr_ratio=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def batches() -> list:
    return [make_samples(seed, 3) for seed in (20, 21, 22, 23)]


def optimizer_tensors(learner: Learner) -> dict[str, torch.Tensor]:
    """AdamW's state by parameter name: exp_avg, exp_avg_sq and step of each."""
    names = {id(p): name for name, p in learner.model.named_parameters()}
    found = {}
    for param, state in learner.optimizer.state.items():
        for key, value in state.items():
            found[f"{names[id(param)]}.{key}"] = value.detach().clone()
    return found


def assert_same_learners(one: Learner, other: Learner) -> None:
    mine, theirs = dict(one.model.named_parameters()), dict(other.model.named_parameters())
    assert mine.keys() == theirs.keys()
    for name, value in mine.items():
        assert torch.equal(value, theirs[name]), name
    a, b = optimizer_tensors(one), optimizer_tensors(other)
    assert a.keys() == b.keys() and len(a) == 3 * len(mine)
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_resume_reaches_the_state_of_the_uninterrupted_run(tiny, tmp_path):
    data = batches()
    straight = Learner(tiny, learner_config(), SCHEDULE)
    for batch in data[:2]:
        straight.step(batch)
    cursor = {"task_cursor": 7, "trained": {"t#1", "t#0"}, "buffer": ("a", 1)}
    path = save(straight, tmp_path, data_cursor=cursor)
    assert path == checkpoint_path(tmp_path, 2) and latest(tmp_path) == path
    drawn = (torch.rand(3), random.random())
    lrs = [straight.step(batch)["optim/lr"] for batch in data[2:]]

    torch.manual_seed(1234)
    random.seed(1234)
    resumed = Learner(tiny, learner_config(), SCHEDULE)
    restored = load(resumed, latest(tmp_path))
    assert (restored.step, restored.policy_version, restored.rng_restored) == (2, 2, True)
    assert restored.data_cursor == {"task_cursor": 7, "trained": ["t#0", "t#1"], "buffer": ["a", 1]}
    assert torch.equal(torch.rand(3), drawn[0]) and random.random() == drawn[1]  # the random states came back
    assert [resumed.step(batch)["optim/lr"] for batch in data[2:]] == lrs  # the schedule continues where it was
    assert (resumed.step_count, resumed.policy_version) == (4, 4)
    assert_same_learners(straight, resumed)  # bitwise: the same operations in the same order


def test_only_the_last_k_stay_and_torn_ones_are_ignored(tiny, tmp_path):
    learner = Learner(tiny, learner_config())
    for seed in (30, 31, 32):
        learner.step(make_samples(seed, 2))
        save(learner, tmp_path, keep_last=2)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [2, 3]
    good = checkpoint_path(tmp_path, 3)
    # Torn: a save that never finished, one without DCP's metadata, one without the manifest, a stray name.
    shutil.copytree(good, checkpoint_path(tmp_path, 9).with_name("step-000009.tmp"))
    shutil.copytree(good, checkpoint_path(tmp_path, 8))
    (checkpoint_path(tmp_path, 8) / ".metadata").unlink()
    shutil.copytree(good, checkpoint_path(tmp_path, 7))
    (checkpoint_path(tmp_path, 7) / "forager.json").unlink()
    shutil.copytree(good, good.with_name("step-000006-copy"))
    assert latest(tmp_path) == good
    for torn in (checkpoint_path(tmp_path, 8), checkpoint_path(tmp_path, 7), tmp_path / "nothing"):
        with pytest.raises(CheckpointError, match="not a complete checkpoint"):
            load(learner, torn)
    learner.step(make_samples(33, 2))
    save(learner, tmp_path, keep_last=2)  # prunes the old one and the leftover .tmp
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3, 4]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert latest(tmp_path / "elsewhere") is None
    with pytest.raises(CheckpointError, match="must be JSON"):
        save(learner, tmp_path, data_cursor={"bad": object()})


def _save_on_two_ranks(rank: int, world: int, init_file: str, model: str, run_dir: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        learner = Learner(model, learner_config(), SCHEDULE)
        for seed in (40, 41):
            learner.step(make_samples(seed * 10 + rank, 2))
        save(learner, run_dir, data_cursor={"rank0_saw": rank == 0})
        weights = learner.full_state_dict()
        _, optimizer = get_state_dict(learner.model, learner.optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save({"weights": weights, "optimizer": optimizer["state"]}, out)
    finally:
        dist.destroy_process_group()


def test_two_rank_checkpoint_loads_on_one_rank(tiny, tmp_path):
    """DCP reshards on load: FSDP2 shards saved by two gloo ranks restore a plain single-process learner."""
    import torch.multiprocessing as mp

    out, run_dir = tmp_path / "ranks.pt", tmp_path / "run"
    mp.spawn(_save_on_two_ranks, args=(2, str(tmp_path / "pg"), str(tiny), str(run_dir), str(out)), nprocs=2)
    saved = torch.load(out, weights_only=False)
    learner = Learner(tiny, learner_config(), SCHEDULE)
    restored = load(learner, latest(run_dir))
    assert (restored.step, restored.policy_version, restored.saved_world_size) == (2, 2, 2)
    assert restored.data_cursor == {"rank0_saw": True} and not restored.rng_restored  # other ranks' states stay
    weights = learner.full_state_dict()
    assert weights.keys() == saved["weights"].keys()
    for name, value in weights.items():
        assert torch.equal(value, saved["weights"][name]), name
    names = {id(p): name for name, p in learner.model.named_parameters()}
    for param, state in learner.optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[key], saved["optimizer"][names[id(param)]][key]), (names[id(param)], key)
    metrics = learner.step(make_samples(42, 2))
    assert metrics["learner/step"] == 3.0 and metrics["optim/lr"] == pytest.approx(learner_lr(2))


def learner_lr(step: int) -> float:
    from forager.train.learner import lr_at

    return lr_at(step, learner_config().lr, SCHEDULE, learner_config().steps)
