"""HFPolicy on the tiny locally built model: exact tokens, exact logprobs, token-in token-out turns."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="HFPolicy needs torch (pip install -e '.[train]')")
pytest.importorskip("transformers", reason="HFPolicy needs transformers (pip install -e '.[train]')")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from forager.core import ContextLengthExceeded, Policy  # noqa: E402
from forager.policies.hf import HFPolicy, PrefixMismatchWarning  # noqa: E402
from forager.testing.tiny_model import DONE_MARKER, build_tiny_model  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a software engineer. Use one tool per reply."}
USER = {"role": "user", "content": "The test tests/test_math.py::test_add fails. Fix the bug."}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py, with `tiny`


@pytest.fixture(scope="module")
def reference_lm(tiny: Path):
    """A second copy of the weights, for teacher-forced scoring independent of the policy's."""
    return AutoModelForCausalLM.from_pretrained(tiny).float().eval()


def teacher_forced_logprobs(lm, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    ids = torch.tensor([prompt + completion])  # (1, T)
    with torch.no_grad():
        logits = lm(input_ids=ids).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    rows = logp[len(prompt) - 1: len(prompt) - 1 + len(completion)]  # position t predicts token t + 1
    return rows.gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()  # (N,)


def split_at_special(ids: list[int], special: set[int]) -> list[list[int]]:
    """The token runs between special tokens, each special token a run of its own."""
    runs: list[list[int]] = [[]]
    for token in ids:
        if token in special:
            runs += [[token], []]
        else:
            runs[-1].append(token)
    return runs


def test_tiny_model_is_cached_deterministic_and_loads(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FORAGER_HOME", str(tmp_path))
    cached = build_tiny_model()
    assert cached.parent == tmp_path / "models" and cached.name.startswith("tiny-")
    assert build_tiny_model() == cached and (cached / DONE_MARKER).exists()
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (cached / name).read_bytes() == (tiny / name).read_bytes(), f"{name} differs between two builds"

    tokenizer = AutoTokenizer.from_pretrained(cached)
    lm = AutoModelForCausalLM.from_pretrained(cached)
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == lm.config.vocab_size
    assert lm.config.num_hidden_layers == 2 and lm.config.max_position_embeddings == 4096
    rendered = tokenizer.apply_chat_template([SYSTEM, USER], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert len(tokenizer.tokenize("<tool: bash>\npython -m pytest -q\n</tool>")) < 20  # the tags were trained on


def test_turns_extend_the_sampled_tokens(tiny: Path, reference_lm) -> None:
    policy = HFPolicy(tiny, temperature=0.8, seed=3, max_tokens=200)
    assert isinstance(policy, Policy) and policy.name == "hf"
    tokenizer = policy.tokenizer
    special = set(tokenizer.all_special_ids)
    messages = [SYSTEM, USER]
    prefix: list[int] | None = None
    sampled: list[list[int]] = []
    finishes = []
    # Long turns end at <|im_end|> (stop), short ones are cut off (length): both boundaries get extended.
    for turn, max_tokens in enumerate([200, 1, 200, 2]):
        out = policy.act(messages, prefix_token_ids=prefix, max_tokens=max_tokens)
        finishes.append(out.finish_reason)
        print(f"turn {turn}: {out.finish_reason}, {out.completion_tokens} tokens, prompt {out.prompt_tokens}, "
              f"{out.latency_s * 1000:.0f} ms")
        assert out.trainable and out.completion_tokens == len(out.token_ids) <= max_tokens
        assert tokenizer.decode(out.token_ids, skip_special_tokens=True) == out.text
        assert (out.token_ids[-1] == tokenizer.eos_token_id) == (out.finish_reason == "stop")
        assert out.prompt_tokens == len(out.prompt_token_ids) and out.latency_s > 0
        if prefix is not None:
            assert out.prompt_token_ids[: len(prefix)] == prefix, f"turn {turn} re-tokenized the history"

        # As text, the prompt is the template's rendering of the conversation; as tokens, it is a fresh
        # tokenization of it except inside the assistant messages, which keep their sampled tokens.
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(out.prompt_token_ids) == rendered
        fresh = split_at_special(tokenizer.encode(rendered, add_special_tokens=False), special)
        actual = split_at_special(out.prompt_token_ids, special)
        assert len(fresh) == len(actual)
        assistant_runs = iter(sampled)
        for index, (fresh_run, actual_run) in enumerate(zip(fresh, actual)):
            is_generation_prompt = index == len(fresh) - 1
            if tokenizer.decode(fresh_run).startswith("assistant\n") and not is_generation_prompt:
                content = next(assistant_runs)
                assert actual_run == tokenizer.encode("assistant\n", add_special_tokens=False) + content
            else:
                assert actual_run == fresh_run
        assert next(assistant_runs, None) is None, "an assistant message is missing from the prompt"

        expected = teacher_forced_logprobs(reference_lm, out.prompt_token_ids, out.token_ids, 0.8)
        assert max(abs(a - b) for a, b in zip(out.logprobs, expected)) < 1e-4

        sampled.append(out.token_ids[:-1] if out.finish_reason == "stop" else out.token_ids)
        prefix = out.prompt_token_ids + out.token_ids
        messages = [*messages, {"role": "assistant", "content": out.text},
                    {"role": "tool", "content": f"$ python -m pytest -q\n{turn + 1} failed, 12 passed"}]
    assert "stop" in finishes and "length" in finishes, f"this seed missed a boundary, pick another: {finishes}"


def test_max_tokens_cuts_with_length(tiny: Path) -> None:
    policy = HFPolicy(tiny, seed=0)
    outs = [policy.act([SYSTEM, USER], max_tokens=3) for _ in range(6)]
    for out in outs:
        if out.finish_reason == "length":
            assert len(out.token_ids) == 3 and out.token_ids[-1] != policy.tokenizer.eos_token_id
        else:  # the model may end its turn before max_tokens
            assert out.finish_reason == "stop" and len(out.token_ids) <= 3
    assert any(out.finish_reason == "length" for out in outs)


def test_context_window(tiny: Path) -> None:
    policy = HFPolicy(tiny, seed=0, max_context=64)
    long_user = {"role": "user", "content": "python -m pytest -q tests/test_math.py " * 40}
    with pytest.raises(ContextLengthExceeded):
        policy.act([SYSTEM, long_user])
    prompt = policy.prompt_ids([USER])
    policy.max_context = len(prompt) + 2
    out = policy.act([USER], max_tokens=100)  # capped at the room left in the window
    assert out.prompt_token_ids == prompt and len(out.token_ids) <= 2


def test_same_seed_same_output_and_truncated_sampling(tiny: Path, reference_lm) -> None:
    first = HFPolicy(tiny, seed=11, top_k=5, temperature=1.3).act([SYSTEM, USER], max_tokens=30)
    second = HFPolicy(tiny, seed=11, top_k=5, temperature=1.3).act([SYSTEM, USER], max_tokens=30)
    assert (first.token_ids, first.logprobs) == (second.token_ids, second.logprobs)
    # top-k chooses which tokens may be drawn; the logprob stays log_softmax(logits / T).
    expected = teacher_forced_logprobs(reference_lm, first.prompt_token_ids, first.token_ids, 1.3)
    assert max(abs(a - b) for a, b in zip(first.logprobs, expected)) < 1e-4
    ids = torch.tensor([first.prompt_token_ids + first.token_ids])
    with torch.no_grad():
        logits = reference_lm(input_ids=ids).logits[0, len(first.prompt_token_ids) - 1: -1]  # (N, V)
    top5 = logits.topk(5, dim=-1).indices
    assert all(token in row for token, row in zip(first.token_ids, top5.tolist()))


def test_greedy_and_top_p(tiny: Path, reference_lm) -> None:
    greedy = HFPolicy(tiny, temperature=0.0, seed=1)
    out = greedy.act([SYSTEM, USER], max_tokens=10)
    assert out.token_ids == HFPolicy(tiny, temperature=0.0, seed=2).act([SYSTEM, USER], max_tokens=10).token_ids
    assert max(abs(a - b) for a, b in zip(
        out.logprobs, teacher_forced_logprobs(reference_lm, out.prompt_token_ids, out.token_ids, 1.0))) < 1e-4
    # The tiny model's most likely token is <|im_end|>: an empty turn, and the next prompt still extends it.
    assert out.token_ids == [greedy.tokenizer.eos_token_id] and out.text == ""
    messages = [SYSTEM, USER, {"role": "assistant", "content": ""}, {"role": "user", "content": "Go on."}]
    prefix = out.prompt_token_ids + out.token_ids
    assert greedy.prompt_ids(messages, prefix_token_ids=prefix)[: len(prefix)] == prefix

    nucleus = HFPolicy(tiny, seed=5, top_p=0.3).act([SYSTEM, USER], max_tokens=30)
    ids = torch.tensor([nucleus.prompt_token_ids + nucleus.token_ids])
    with torch.no_grad():
        logits = reference_lm(input_ids=ids).logits[0, len(nucleus.prompt_token_ids) - 1: -1]  # (N, V)
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    for token, row_probs, row_order in zip(nucleus.token_ids, probs, order):
        kept = row_order[(row_probs.cumsum(-1) - row_probs) < 0.3]
        assert token in kept.tolist()


def test_update_weights_bumps_the_version(tiny: Path, reference_lm) -> None:
    policy = HFPolicy(tiny, seed=0, temperature=0.0)
    state = {name: tensor.clone() for name, tensor in reference_lm.state_dict().items()}
    state["lm_head.weight"][:, 0] = 0.0  # no more end-of-turn bias: greedy no longer stops at once
    policy.update_weights(state, policy_version=7)
    out = policy.act([SYSTEM, USER], max_tokens=5)
    assert out.policy_version == 7 and out.token_ids[0] != policy.tokenizer.eos_token_id


def test_prefix_without_assistant_message_warns_and_renders_everything(tiny: Path) -> None:
    policy = HFPolicy(tiny, seed=0)
    with pytest.warns(PrefixMismatchWarning):
        out = policy.act([SYSTEM, USER], prefix_token_ids=[1, 2, 3], max_tokens=2)
    assert out.prompt_token_ids == policy.prompt_ids([SYSTEM, USER])


def test_concurrent_calls_are_serialised(tiny: Path) -> None:
    policy = HFPolicy(tiny, seed=0)
    results: list[int] = []

    def worker() -> None:
        results.append(len(policy.act([SYSTEM, USER], max_tokens=20).token_ids))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(0 < n <= 20 for n in results)
