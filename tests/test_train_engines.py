"""Engines with weight updates: in process, and in a sampler process fed by gloo broadcasts.

Every check runs the real parts: the tiny locally built model, real child processes, a real gloo
process group over TCP, and a real episode on the local runtime through the agent loop.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the engines need torch (pip install -e '.[train]')")
pytest.importorskip("transformers", reason="the engines need transformers (pip install -e '.[train]')")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from forager.agent.config import AgentConfig  # noqa: E402
from forager.agent.loop import Episode, make_env  # noqa: E402
from forager.core import PolicyError  # noqa: E402
from forager.images.sample import sample_tasks  # noqa: E402
from forager.train.engines import Engine, EngineError, make_engine  # noqa: E402
from forager.train.engines.hf import HFEngine  # noqa: E402
from forager.train.engines.remote import RemoteEngine  # noqa: E402
from forager.train.sync import WeightBroadcaster, pack_buckets, tensor_checksums  # noqa: E402

USER = {"role": "user", "content": "The test tests/test_math.py::test_add fails. Fix the bug."}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py, with `tiny`


@pytest.fixture(scope="module")
def original(tiny: Path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(tiny).float().state_dict())


def without_end_of_turn_bias(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """New weights whose greedy reply is no longer an immediate <|im_end|> (see forager.testing.tiny_model)."""
    new = {name: tensor.clone() for name, tensor in weights.items()}
    new["lm_head.weight"][:, 0] = 0.0
    return new


def perturbed(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: t + 0.01 * torch.randn(t.shape, generator=generator) for name, t in weights.items()}


def scorer(tiny: Path, weights: dict[str, torch.Tensor]):
    lm = AutoModelForCausalLM.from_pretrained(tiny).float().eval()
    lm.load_state_dict(weights)
    return lm


def teacher_forced(lm, prompt: list[int], completion: list[int]) -> tuple[list[float], list[int]]:
    """Each completion token's logprob at temperature 1, and the argmax at each position."""
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([prompt + completion])).logits[0]  # (T, V)
    rows = torch.log_softmax(logits[len(prompt) - 1: -1].float(), dim=-1)  # position t predicts token t + 1
    return rows.gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist(), rows.argmax(-1).tolist()


def sampler_children() -> list[int]:
    """Processes this test process started that run the sampler module (and are not yet reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"forager.train.engines.sampler" in cmdline:
            found.append(int(entry.name))
    return found


def test_hf_engine_swaps_weights_in_place_and_records_the_version(tiny: Path, original) -> None:
    engine = make_engine("hf", str(tiny), temperature=0.0, seed=0)
    assert isinstance(engine, HFEngine) and isinstance(engine, Engine) and engine.version == 0
    before = engine.act([USER], max_tokens=6)
    assert before.token_ids == [engine.tokenizer.eos_token_id] and before.policy_version == 0  # the tiny model's bias
    storage = {name: t.data_ptr() for name, t in engine.lm.state_dict().items()}

    new = without_end_of_turn_bias(original)
    engine.update_weights(((name, t.to(torch.bfloat16)) for name, t in new.items()), 1)  # pairs, cast on copy
    assert engine.version == 1
    for name, tensor in engine.lm.state_dict().items():
        assert torch.equal(tensor, new[name].to(torch.bfloat16).float()), name
        assert tensor.data_ptr() == storage[name], f"{name} was replaced, not copied into"
    after = engine.act([USER], max_tokens=6)
    assert after.policy_version == 1 and len(after.token_ids) == 6 and after.token_ids[0] != before.token_ids[0]
    _, argmax = teacher_forced(scorer(tiny, dict(engine.lm.state_dict())), after.prompt_token_ids, after.token_ids)
    assert argmax == after.token_ids  # greedy under the new weights

    with pytest.raises(PolicyError, match="nothing was changed.*wrong shape: lm_head.weight.*missing: model.norm"):
        engine.update_weights({**{k: v for k, v in new.items() if k != "model.norm.weight"},
                               "lm_head.weight": torch.zeros(3, 3)}, 2)
    with pytest.raises(PolicyError, match="unknown: lm_head.bias"):
        engine.update_weights({**new, "lm_head.bias": torch.zeros(3)}, 2)
    assert engine.version == 1 and torch.equal(engine.lm.lm_head.weight, new["lm_head.weight"].bfloat16().float())
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.act([USER])


def test_a_tied_weight_takes_one_value_under_either_name(tiny: Path, original) -> None:
    engine = HFEngine(str(tiny), temperature=0.0)
    engine.lm.lm_head.weight = engine.lm.model.embed_tokens.weight  # tied, as SmolLM2's are
    new = perturbed(original, seed=3)
    with pytest.raises(PolicyError, match="tied weights differ: model.embed_tokens.weight != lm_head.weight"):
        engine.update_weights(new, 1)
    engine.update_weights({name: t for name, t in new.items() if name != "lm_head.weight"}, 1)  # one name is enough
    assert torch.equal(engine.lm.lm_head.weight, new["model.embed_tokens.weight"]) and engine.version == 1


def test_an_update_waits_for_the_generation_in_flight(tiny: Path, original) -> None:
    old, new = without_end_of_turn_bias(original), perturbed(without_end_of_turn_bias(original), seed=1)
    engine = HFEngine(str(tiny), temperature=1.0, seed=4)
    engine.update_weights(old, 1)
    outputs = []
    generating = threading.Thread(target=lambda: outputs.append(engine.act([USER], max_tokens=300)))
    generating.start()
    while not engine._lock.locked():  # the lock is held exactly while tokens are sampled
        assert generating.is_alive(), "the generation ended before the update could be sent: make it longer"
        time.sleep(0.001)
    engine.update_weights(new, 2)
    generating.join()
    (during,) = outputs
    assert during.policy_version == 1 and len(during.token_ids) > 20
    # Every token of the generation in flight was sampled by version 1's weights, none by version 2's.
    logprobs, _ = teacher_forced(scorer(tiny, old), during.prompt_token_ids, during.token_ids)
    assert max(abs(a - b) for a, b in zip(during.logprobs, logprobs)) < 1e-4
    next_one = engine.act([USER], max_tokens=5)
    logprobs, _ = teacher_forced(scorer(tiny, new), next_one.prompt_token_ids, next_one.token_ids)
    assert next_one.policy_version == 2 and max(abs(a - b) for a, b in zip(next_one.logprobs, logprobs)) < 1e-4


def test_buckets_group_dtypes_split_at_the_size_and_send_a_tied_weight_once() -> None:
    embed = torch.randn(40, 8)  # 1280 bytes: more than a bucket, so a bucket of its own
    weights = [("embed", embed), ("a", torch.randn(10)), ("h", torch.randn(10).half()), ("b", torch.randn(120)),
               ("c", torch.randn(3)), ("head", embed), ("h2", torch.randn(4).half())]
    aliases: dict[str, str] = {}
    buckets = list(pack_buckets(weights, bucket_bytes=512, aliases=aliases))
    layout = [(str(b.dtype), [e["name"] for e in b.entries]) for b in buckets]
    assert layout == [("torch.float32", ["embed"]), ("torch.float32", ["a"]), ("torch.float16", ["h", "h2"]),
                      ("torch.float32", ["b", "c"])]  # a bucket goes when full; the ones still open at the end
    assert aliases == {"head": "embed"} and [e["offset"] for e in buckets[3].entries] == [0, 120]


def test_remote_samplers_receive_successive_broadcasts_bit_exactly(tiny: Path, original) -> None:
    broadcaster = WeightBroadcaster(2, bucket_bytes=64 * 1024)  # small buckets: many of them, big tensors alone
    engines = [RemoteEngine(str(tiny), broadcaster=broadcaster, rank=rank, threads=1, temperature=0.0)
               for rank in (1, 2)]
    try:
        broadcaster.connect(check=lambda: [engine.check_alive() for engine in engines])
        first = perturbed(original, seed=1)
        stats = broadcaster.broadcast(first.items(), version=1)
        assert stats.buckets > 2 and stats.tensors == len(first) and stats.bytes == 4 * sum(
            t.numel() for t in first.values())
        expected = tensor_checksums(first)
        assert all(engine.checksums() == expected for engine in engines)
        # The second sync mixes dtypes (a bfloat16 bucket travels too); the samplers cast on load.
        second = {name: (t.bfloat16() if i % 2 else t) for i, (name, t) in enumerate(perturbed(original, 2).items())}
        broadcaster.broadcast(second, version=2)
        expected = tensor_checksums({name: t.float() for name, t in second.items()})
        for engine in engines:
            assert engine.checksums() == expected
            assert engine.version == 2 and engine.status()["version"] == 2 and engine.status()["syncs"] == 2
            assert engine.act([USER], max_tokens=3).policy_version == 2
        print(f"tiny model, gloo, 2 samplers: {stats.bytes / 1e6:.2f} MB in {stats.seconds * 1000:.1f} ms")
    finally:
        broadcaster.close()
        for engine in engines:
            engine.close()
    assert all(engine.process.returncode == 0 for engine in engines) and not sampler_children()


@pytest.mark.parametrize("kind", ["hf", "remote"])
def test_an_episode_goes_on_under_new_weights_and_each_turn_records_its_version(tiny: Path, original, kind) -> None:
    engine = make_engine(kind, str(tiny), temperature=1.0, seed=7, **({"threads": 1} if kind == "remote" else {}))
    new = without_end_of_turn_bias(original)
    config = AgentConfig(max_turns=3, max_tokens_per_turn=8)
    env = make_env(config, runtime="local")

    def swap_after_the_first_turn(trajectory) -> None:
        if trajectory.num_turns == 1:
            engine.update_weights(new, 1)

    try:
        trajectory = Episode(env, engine, sample_tasks()[0], config, on_turn=swap_after_the_first_turn).run()
    finally:
        env.close()
        engine.close()
    assistant = [i for i, m in enumerate(trajectory.messages) if m.role == "assistant"]
    assert trajectory.termination == "out_of_turns" and trajectory.trainable, trajectory.error
    assert [trajectory.messages[i].policy_version for i in assistant] == [0, 1, 1]
    # Each turn's logprobs are those of the weights its version names: the swap took effect mid-episode.
    scorers = {0: scorer(tiny, original), 1: scorer(tiny, new)}
    for index in assistant:
        message = trajectory.messages[index]
        prompt = [t for m in trajectory.messages[:index] for t in (m.token_ids or [])]
        logprobs, _ = teacher_forced(scorers[message.policy_version], prompt, message.token_ids)
        assert max(abs(a - b) for a, b in zip(message.logprobs, logprobs)) < 1e-4


def test_sampler_failures_are_clear_errors_and_leave_no_process(tiny: Path, original, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EngineError, match=f"failed to start: .*{missing.name}"):
        RemoteEngine(str(missing), threads=1)
    with pytest.raises(EngineError, match="rank 2 is outside the weight group's ranks 1 to 1"):
        RemoteEngine(str(tiny), rank=2)
    assert not sampler_children()

    engine = RemoteEngine(str(tiny), threads=1, temperature=0.0)
    with pytest.raises(PolicyError, match="failed in act: TypeError"):
        engine.act([{"role": 5, "content": "a role the chat template cannot join"}])
    bad = {**original, "lm_head.weight": torch.zeros(2, 2)}
    with pytest.raises(EngineError, match="did not reach every sampler: sampler 1: PolicyError: weight update "
                                          "refused.*wrong shape: lm_head.weight"):
        engine.update_weights(bad, 1)
    assert engine.version == 0 and engine.status()["version"] == 0
    engine.update_weights(without_end_of_turn_bias(original), 1)  # the group survives a refused update
    assert engine.act([USER], max_tokens=2).policy_version == 1

    os.kill(engine.process.pid, signal.SIGKILL)
    with pytest.raises(EngineError, match="exited with status -9"):
        engine.act([USER])
    with pytest.raises(EngineError, match="exited with status -9"):
        engine.update_weights(original, 2)
    engine.close()
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.act([USER])
    assert engine.process.returncode == -9 and not sampler_children()
