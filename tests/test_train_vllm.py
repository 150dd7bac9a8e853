"""The vLLM engine's whole path but vLLM's kernels and NCCL: token-in-token-out, in-flight weight updates, bad servers.

Real parts: the test server (`forager.testing.openai_server`) started as processes by the engine itself, each
backed by the tiny transformers model, with the engine's worker extension mixed into its worker exactly as
`vllm serve --worker-extension-cls` does; the learner's weight group over gloo (NCCL on GPUs is the same code,
`bench/gpu_check.sh`); safetensors files for the disk fallback; the HTTP endpoints a dev-mode vLLM server has
(`/v1/completions` with token ids, `/pause`, `/resume`, `/collective_rpc`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the engines need torch (pip install -e '.[train]')")

import httpx  # noqa: E402
import torch  # noqa: E402

from forager.core import ContextLengthExceeded, PolicyUnavailable  # noqa: E402
from forager.policies.chat_tokens import ChatTokens, PrefixMismatchWarning  # noqa: E402
from forager.policies.openai import OpenAIPolicy  # noqa: E402
from forager.testing.openai_server import OpenAIServer, Reply, episode  # noqa: E402
from forager.testing.toy_chat import IM_END, ToyTokenizer, encode, render_chat, toy_logprob  # noqa: E402
from forager.train.engines import EngineError, make_engine  # noqa: E402
from forager.train.engines.vllm import EXTENSION, VLLMEngine, vllm_serve_command  # noqa: E402
from forager.train.sync import tensor_checksums  # noqa: E402

SYSTEM = {"role": "system", "content": "You fix bugs."}
USER = {"role": "user", "content": "The tests fail."}
SERVER = [sys.executable, "-m", "forager.testing.openai_server", "--model", "{model}", "--port", "{port}",
          "--served-model-name", "{served_model_name}", "--worker-extension-cls", EXTENSION, "--threads", "1",
          "--seed", "{seed}"]


def toy_tokens() -> ChatTokens:
    return ChatTokens(ToyTokenizer(), {IM_END})


# -- token-in-token-out through /v1/completions -------------------------------------------------------
def test_completions_send_the_exact_prompt_ids_and_each_turn_extends_the_last() -> None:
    script = episode([Reply("<tool: bash>\nls\n</tool>"), Reply("<tool: submit>\n</tool>")])
    with OpenAIServer(script, max_model_len=4096) as server:
        policy = OpenAIPolicy(server.base_url, model=server.model, api="completions", tokenizer=toy_tokens())
        first = policy.act([SYSTEM, USER])
        assert first.prompt_token_ids == render_chat([SYSTEM, USER])
        assert first.token_ids == [*encode("<tool: bash>\nls\n</tool>"), IM_END] and first.trainable
        assert first.logprobs == [toy_logprob(t, i) for i, t in enumerate(first.token_ids)]
        history = [SYSTEM, USER, {"role": "assistant", "content": first.text},
                   {"role": "tool", "content": "setup.py\nsrc"}]
        prefix = first.prompt_token_ids + first.token_ids
        second = policy.act(history, prefix_token_ids=prefix)
        assert second.prompt_token_ids[:len(prefix)] == prefix  # the sampled tokens as they came
        assert second.prompt_token_ids == render_chat(history)  # and the delta is the template's
        assert second.text == "<tool: submit>\n</tool>"  # the responder saw the second turn
        sent = [r.json for r in server.requests if r.path == "/v1/completions"]
        assert [body["prompt"] for body in sent] == [first.prompt_token_ids, second.prompt_token_ids]
        # no max_tokens given: the request asks for what the context has left, as the server listed it
        assert sent[0]["max_tokens"] == 4096 - len(first.prompt_token_ids)
        assert sent[0]["return_token_ids"] is True and "messages" not in sent[0]
        assert policy.describe()["api"] == "completions"


def test_completions_refuse_a_prompt_that_fills_the_context() -> None:
    with OpenAIServer("ok", max_model_len=64) as server:
        policy = OpenAIPolicy(server.base_url, model=server.model, api="completions", tokenizer=toy_tokens())
        with pytest.raises(ContextLengthExceeded, match="no room to reply"):
            policy.act([SYSTEM, {"role": "user", "content": "x" * 100}])
        assert not [r for r in server.requests if r.path == "/v1/completions"]  # refused before sending


def test_a_template_that_rewrites_earlier_turns_still_extends_the_sampled_tokens(tiny: Path) -> None:
    """Qwen3's template drops the reasoning of assistant turns before the last user message: rendering the whole
    conversation again would change tokens the sampler produced. The delta never renders the history."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = (
        "{% for m in messages %}{% set c = m['content'] %}"
        "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ c }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    chat = ChatTokens(tokenizer, {tokenizer.eos_token_id})
    first = chat.prompt_ids([SYSTEM, USER])
    sampled = chat.encode("<think>the bug is in bump()</think><tool: submit>\n</tool>") + [tokenizer.eos_token_id]
    history = [SYSTEM, USER, {"role": "assistant", "content": chat.decode(sampled)}, {"role": "tool", "content": "ok"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrefixMismatchWarning)
        second = chat.prompt_ids(history, prefix_token_ids=first + sampled)
    assert second[:len(first) + len(sampled)] == first + sampled
    assert chat.decode(second[len(first) + len(sampled):], skip_special_tokens=False) == (
        "\n<|im_start|>tool\nok<|im_end|>\n<|im_start|>assistant\n")
    # what a re-render would have given: the reasoning gone from the history the model actually saw
    assert "<think>" not in chat.render(history, None, generation_prompt=True)


# -- the engine over test servers, started by the engine --------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny: Path):
    with VLLMEngine(str(tiny), server_command=SERVER, engines=2, port=18431, max_tokens=12, seed=3,
                    start_timeout_s=120) as engine:
        yield engine


def shifted(tiny: Path, by: float) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        for parameter in lm.parameters():
            parameter.add_(by)
    return lm.state_dict()


def test_the_engine_starts_servers_and_an_episode_goes_on_under_new_weights(engine: VLLMEngine, tiny: Path) -> None:
    assert len(engine.processes) == 2 and engine.workers == [1, 1]
    assert all(p.command[p.command.index("--worker-extension-cls") + 1] == EXTENSION for p in engine.processes)
    first = engine.act([SYSTEM, USER])
    assert first.policy_version == engine.version and first.trainable and len(first.token_ids) <= 12

    weights = shifted(tiny, 0.01)
    version = engine.version + 1
    engine.update_weights(weights, version)  # between two turns of the episode
    assert engine.last_sync is not None and engine.last_sync.version == version and engine.last_sync.bytes > 0
    expected = tensor_checksums(weights)
    assert engine.checksums(0) == expected and engine.checksums(1) == expected  # bit-exact on every server
    states = [state for server in engine.status() for state in server]
    assert {s["version"] for s in states} == {version} and all(s["error"] is None for s in states)
    for url in engine.base_urls:  # paused for the update, serving again after it
        assert httpx.get(url.removesuffix("/v1") + "/is_paused").json() == {"is_paused": False}

    history = [SYSTEM, USER, {"role": "assistant", "content": first.text}, {"role": "tool", "content": "1 failed"}]
    second = engine.act(history, prefix_token_ids=first.prompt_token_ids + first.token_ids)
    assert second.policy_version == version  # the same episode's next turn, sampled by the new weights
    assert second.prompt_token_ids[:len(first.prompt_token_ids)] == first.prompt_token_ids


def test_the_disk_fallback_loads_the_same_weights(engine: VLLMEngine, tiny: Path, tmp_path: Path) -> None:
    weights = shifted(tiny, -0.02)
    engine.sync_method, engine.sync_dir = "disk", tmp_path
    try:
        engine.update_weights(weights, engine.version + 1)
    finally:
        engine.sync_method = "gloo"
    assert engine.checksums(1) == tensor_checksums(weights)
    assert not list(tmp_path.iterdir())  # the file is gone once every server loaded it
    engine.update_weights(shifted(tiny, 0.0), engine.version + 1)  # and the group still works after it
    assert engine.checksums(0) == tensor_checksums(shifted(tiny, 0.0))
    engine.sync_method, held = "ipc", engine.version  # CUDA IPC is for GPU tensors: a clear error, nothing changed
    try:
        with pytest.raises(EngineError, match="CUDA IPC shares GPU tensors only"):
            engine.update_weights(shifted(tiny, 0.5), held + 1)
    finally:
        engine.sync_method = "gloo"
    assert engine.version == held and engine.checksums(0) == tensor_checksums(shifted(tiny, 0.0))


def test_a_server_left_at_another_version_is_refused(engine: VLLMEngine) -> None:
    held = engine.version
    assert held > 0
    with pytest.raises(EngineError, match=rf"holds policy version\(s\) \[{held}\].*this run is at version 0"):
        VLLMEngine(engine.model, base_urls=engine.base_urls[:1], policy_version=0, start_timeout_s=10)
    attached = VLLMEngine(engine.model, base_urls=engine.base_urls[:1], policy_version=held, start_timeout_s=10)
    attached.close()  # the run at that version may use it; closing an attached engine leaves the server up
    assert engine.processes[0].process.poll() is None


def test_bad_servers_give_clear_errors_and_leave_no_process(tiny: Path) -> None:
    started = time.monotonic()
    with pytest.raises(EngineError, match="did not answer /health within 1 s"):
        VLLMEngine(str(tiny), base_urls=["http://127.0.0.1:9/v1"], start_timeout_s=1)
    assert time.monotonic() - started < 15

    with OpenAIServer("ok", dev_mode=False) as plain:  # a vLLM without VLLM_SERVER_DEV_MODE
        with pytest.raises(EngineError, match="VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls"):
            VLLMEngine(str(tiny), base_urls=[plain.base_url], start_timeout_s=10)

    crashing = [sys.executable, "-c", "import sys; print('CUDA out of memory'); sys.exit(3)"]
    with pytest.raises(EngineError, match=r"(?s)exited with status 3.*CUDA out of memory"):
        VLLMEngine(str(tiny), server_command=crashing, start_timeout_s=30)

    with OpenAIServer(Reply("late", delay_s=3)) as slow:
        policy = OpenAIPolicy(slow.base_url, model=slow.model, api="completions", tokenizer=toy_tokens(),
                              timeout=0.5, max_retries=0, max_context=512)
        with pytest.raises(PolicyUnavailable, match="no answer within the 0.5s timeout"):
            policy.act([SYSTEM, USER])


def test_a_server_that_dies_mid_run_fails_the_next_update_with_its_exit(tiny: Path) -> None:
    engine = VLLMEngine(str(tiny), server_command=SERVER, port=18441, start_timeout_s=120)
    try:
        process = engine.processes[0].process
        process.kill()
        process.wait()
        with pytest.raises(EngineError, match="exited with status -9"):
            engine.update_weights(shifted(tiny, 0.0), 1)
    finally:
        engine.close()
    assert process.poll() is not None


def test_the_vllm_command_and_the_engine_by_name(tiny: Path) -> None:
    command = vllm_serve_command("Qwen/Qwen3-32B", 8000, tensor_parallel=4, max_model_len=131072)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    for flag, value in (("--tensor-parallel-size", "4"), ("--worker-extension-cls", EXTENSION),
                        ("--max-model-len", "131072"), ("--served-model-name", "forager-policy")):
        assert command[command.index(flag) + 1] == value
    if importlib.util.find_spec("vllm") is None:  # as here: starting servers says how to get vLLM
        with pytest.raises(EngineError, match=r"pip install 'forager\[vllm\]'"):
            make_engine("vllm", str(tiny))


# -- the trainer with rollout.backend vllm ------------------------------------------------------------
SHAPED = {"shaping": [{"name": "format-penalty", "per_error": 0.1}, {"name": "length-penalty", "per_turn": 0.05,
                                                                    "free_turns": 0}]}


def server_pids() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "forager.testing.openai_server"], capture_output=True, text=True)
    return {int(pid) for pid in found.stdout.split()}


def test_training_samples_from_servers_it_starts_and_updates_them_between_steps(tmp_path: Path) -> None:
    """`forager train` with rollout.backend=vllm on the learning demo (its tiny model resolves the demo task now and
    then, so groups carry signal): the trainer starts the server, the episodes go through /v1/completions with
    the exact ids, each step's new weights reach the server by broadcast before the next episodes sample
    (synchronous mode), and the server is gone when the run ends. The reward adds format and length penalties to
    the test outcome and episodes sample at temperature 1, so the members of a group rarely all earn the same:
    in three groups, some step carries signal."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    before = server_pids()
    args = [sys.executable, "-m", "forager", "train", "--config", str(root / "configs/train/cpu-demo.yaml"),
            "--out", str(out), "learner.steps=3", "rollout.group_size=4", "rollout.concurrency=1",
            "rollout.max_buffered_groups=1", "learner.tokens_per_batch=2048", "learner.microbatch_tokens=2048", "sync.max_staleness=0",
            "rollout.backend=vllm", f"rollout.server_command={json.dumps(SERVER)}", "sync.method=gloo",
            "rollout.temperature=1.0", f"env.reward={json.dumps(SHAPED)}"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=400, env=env, cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from forager.train.metrics import read_metrics
    from forager.trajectories.store import read_trajectories

    lines = read_metrics(out)
    assert [line["step"] for line in lines] == [1, 2, 3]
    updates = [0, *(int(sum(not line["learner/skipped"] for line in lines[:k])) for k in (1, 2))]
    trajectories = list(read_trajectories([out / "trajectories.jsonl"]))
    turns = [m for t in trajectories for m in t.messages if m.role == "assistant"]
    assert turns and all(m.token_ids and m.logprobs for m in turns)  # token-in-token-out: every turn trainable
    # synchronous: step k trained on episodes sampled after the updates of the steps before it, and only those
    assert {m.policy_version for m in turns} == set(updates), (updates, lines)
    for line in lines:  # every step that changed the weights sent them to the server, and only those
        assert (line["time/sync_s"] > 0) == (not line["learner/skipped"]), line
    assert any(not line["learner/skipped"] for line in lines), "no group of three differed in reward"
    assert server_pids() <= before  # the run stopped the server it started


def test_servers_placed_by_ray_run_in_actors_that_hold_them(tiny: Path) -> None:
    """`placement="ray"` (what a learner rank on Ray gets): each server starts inside a Ray actor on whichever node
    has room, listens on that node's address, takes updates through the same group, and goes with its actor."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with VLLMEngine(str(tiny), server_command=[*SERVER, "--host", "{host}"], placement="ray", max_tokens=4,
                        start_timeout_s=180) as engine:
            assert len(engine.actors) == 1 and not engine.processes
            url = engine.base_urls[0]
            assert not url.startswith("http://127.0.0.1:") or ray.util.get_node_ip_address() == "127.0.0.1"
            assert engine.act([SYSTEM, USER]).trainable
            weights = shifted(tiny, 0.03)
            engine.update_weights(weights, 1)
            assert engine.checksums() == tensor_checksums(weights)
        with pytest.raises(httpx.TransportError):  # the server went with its actor
            httpx.get(url.removesuffix("/v1") + "/health", timeout=5)
    finally:
        ray.shutdown()
