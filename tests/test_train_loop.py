"""`forager train`: a tiny run through the CLI, a SIGKILL and the same command resuming, `train plan`, and bad keys.

Real parts: the CLI in a subprocess, the tiny transformers model as learner (and as the `hf` engine), the
sample tasks on the local runtime. The kill test samples with the scripted engine (the reference fix in the
tiny model's token ids, so groups have different rewards and the learner really steps, the policy version
moves, and staleness means something); the child swaps it in for the engine factory, nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training needs torch (pip install -e '.[train]')")

from forager.train.checkpoint import latest  # noqa: E402
from forager.train.config import load_train_config  # noqa: E402
from forager.train.metrics import REQUIRED, read_metrics  # noqa: E402
from forager.trajectories.store import read_trajectories  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "train" / "tiny-cpu.yaml"
SCRIPTED = (
    "import forager.train.loop as loop\n"
    "from forager.testing.scripted_engine import ScriptedEngine\n"
    "loop._engine = lambda config, model, version: ScriptedEngine(fail_every=2, delay_s=0.1)\n"
    "from forager.cli import main\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def tiny_model() -> str:
    from forager.testing.tiny_model import build_tiny_model

    return str(build_tiny_model())


def command(out: Path, model: str, *overrides: str, scripted: bool = False) -> list[str]:
    head = [sys.executable, "-c", SCRIPTED] if scripted else [sys.executable, "-m", "forager"]
    return [*head, "train", "--config", str(TINY_CONFIG), "--out", str(out), f"model.path={model}", *overrides]


def child_env(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    # Two cores shared: one torch thread keeps the run steady; scratch clones stay under tmp_path.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch),
            "COLUMNS": "200"}


def run(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=child_env(tmp_path), cwd=ROOT)


def test_a_tiny_run_leaves_config_metrics_trajectories_checkpoints_and_events(tmp_path: Path, tiny_model: str) -> None:
    out = tmp_path / "run"
    done = run(command(out, tiny_model), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training" in done.stdout and "reward mean" in done.stdout  # the summary table
    config = load_train_config(out / "config.yaml")
    assert config.model.path == tiny_model and config.out_dir == str(out) and config.learner.steps == 3
    lines = read_metrics(out)
    assert [line["step"] for line in lines] == [1, 2, 3]
    for line in lines:
        assert set(REQUIRED) <= set(line) and line["samples"] >= 2
        assert line["staleness_max"] <= config.sync.max_staleness
    trajectories = read_trajectories([out])
    ids = [t.trajectory_id for t in trajectories]
    assert len(ids) >= 6 and len(ids) == len(set(ids))
    assert latest(out) is not None and latest(out).name == "step-000003"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(out / "hf")  # the last step's weights, in the transformers layout
    assert json.loads((out / "hf" / "forager-policy.json").read_text())["policy_version"] == lines[-1]["policy_version"]
    assert final.config.vocab_size > 0 and (out / "hf" / "tokenizer_config.json").exists()
    viewed = run([sys.executable, "-m", "forager", "view", str(out), "--out", str(tmp_path / "v.html")], tmp_path)
    assert viewed.returncode == 0 and (tmp_path / "v.html").stat().st_size > 0, viewed.stdout + viewed.stderr
    # The same command on a finished run resumes from its last checkpoint and has nothing left to do.
    again = run(command(out, tiny_model), tmp_path)
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stdout + again.stderr
    assert [line["step"] for line in read_metrics(out)] == [1, 2, 3]


def test_sigkill_then_the_same_command_resumes_without_duplicates_or_stale_samples(tmp_path: Path,
                                                                                    tiny_model: str) -> None:
    out = tmp_path / "run"
    # The scripted fix takes a few turns and long observations: room for them, one group per step.
    args = command(out, tiny_model, "learner.steps=4", "algorithm.skip_zero_advantage_groups=true", "env.max_turns=8",
                   "env.max_tokens_per_turn=512", "env.max_context_tokens=16384", "learner.microbatch_tokens=16384",
                   "learner.tokens_per_batch=16384", scripted=True)
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(tmp_path), cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while latest(out) is None:
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    saved = json.loads((latest(out) / "forager.json").read_text())
    before = {line["step"]: line for line in read_metrics(out)}
    assert saved["step"] < 4 and saved["policy_version"] >= 1  # killed mid-run, after real learner steps

    done = run(args, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"(step {saved['step']}, policy version {saved['policy_version']})" in done.stdout
    lines = read_metrics(out)
    assert [line["step"] for line in lines] == [1, 2, 3, 4]  # continued, no step twice
    for line in lines[:saved["step"]]:
        assert line == before[line["step"]]  # the checkpointed steps are kept as they were
    versions = [line["policy_version"] for line in lines]
    assert versions == sorted(versions) and versions[saved["step"]] >= saved["policy_version"]
    bound = 1  # sync.max_staleness of the tiny config
    for line in lines:
        lags = [int(key.rsplit("/", 1)[1]) for key in line if key.startswith("rollout/staleness/")]
        assert line["staleness_max"] <= bound and all(lag <= bound for lag in lags), line
        assert line["learner/staleness_max"] <= bound
    ids = [t.trajectory_id for t in read_trajectories([out])]
    assert len(ids) == len(set(ids))  # no finished episode sampled twice under its id
    cursor = json.loads((latest(out) / "forager.json").read_text())["data_cursor"]
    assert len(cursor["trained"]) == len(set(cursor["trained"])) and set(cursor["trained"]) <= set(ids)
    assert latest(out).name == "step-000004"


def test_plan_prints_the_breakdown_with_and_without_offload_and_the_verdict(tmp_path: Path) -> None:
    from forager.train.plan import GIB, plan_from_config

    cwm = ROOT / "configs" / "train" / "cwm-32b.yaml"
    done = run([sys.executable, "-m", "forager", "train", "plan", "--config", str(cwm), "--gpus", "8",
                "--gpu-memory", "80"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    config = load_train_config(cwm, ["learner.num_gpus=8"])
    plain = plan_from_config(config)
    offloaded = plan_from_config(load_train_config(cwm, ["learner.num_gpus=8", "learner.fsdp.cpu_offload=true"]))
    assert plain.render(80) in done.stdout and offloaded.render(80) in done.stdout
    assert not plain.fits(80) and offloaded.fits(80)  # 8 GPUs: 32B of fp32 shards and AdamW state need the host
    assert f"{plain.total / GIB:.2f}" in done.stdout and "fits only with CPU offload" in done.stdout
    enough = run([sys.executable, "-m", "forager", "train", "plan", "--config", str(cwm), "--gpu-memory", "80"],
                 tmp_path)
    assert enough.returncode == 0 and "32 x 80 GiB: fits without CPU offload" in enough.stdout


@pytest.mark.parametrize("argv", [["train", "--config", str(TINY_CONFIG), "learner.lrr=1"],
                                  ["train", "plan", "--config", str(TINY_CONFIG), "rollout.group_sise=4"]])
def test_an_unknown_override_is_an_error_naming_the_closest_key(tmp_path: Path, argv: list[str]) -> None:
    done = run([sys.executable, "-m", "forager", *argv], tmp_path, timeout=120)
    assert done.returncode == 1
    closest = "learner.lr" if "lrr" in argv[-1] else "rollout.group_size"
    assert f"error: unknown key '{argv[-1].split('=')[0]}'; did you mean '{closest}'?" in done.stdout


def test_a_run_dir_with_another_config_is_refused(tmp_path: Path, tiny_model: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(load_train_config(TINY_CONFIG, [f"model.path={tiny_model}",
                                                                     f"out_dir={out}"]).to_yaml())
    done = run(command(out, tiny_model, "learner.lr=0.5"), tmp_path, timeout=120)
    assert done.returncode == 1 and "another config (learner.lr differ)" in done.stdout, done.stdout + done.stderr


def test_two_ranks_under_torchrun_train_and_a_single_rank_resumes(tmp_path: Path, tiny_model: str) -> None:
    """`torchrun --nproc_per_node 2`: rank 0 samples and reports, both ranks train their share of each batch
    (FSDP2 over gloo), gather the weights for the engine and save one DCP shard each; one rank then resumes."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    args = [*launcher, *command(out, tiny_model, "learner.steps=2", "checkpoint.interval=1")[1:]]
    done = run(args, tmp_path, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("training ") == 1  # rank 0 reports for both
    lines = read_metrics(out)
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:  # the learner's counts are summed over the ranks: the whole batch, once
        assert line["perf/samples"] == line["samples"] >= 2
    newest = latest(out)
    assert newest is not None and newest.name == "step-000002"
    assert sorted(p.name for p in newest.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert json.loads((newest / "forager.json").read_text())["world_size"] == 2
    again = run(command(out, tiny_model, "learner.steps=2", "checkpoint.interval=1"), tmp_path)
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stdout + again.stderr
    assert [line["step"] for line in read_metrics(out)] == [1, 2]
