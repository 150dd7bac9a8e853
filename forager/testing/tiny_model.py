"""A tiny chat model built here, from nothing: tests and CPU smoke runs need no model hub.

`build_tiny_model()` trains a byte-level BPE tokenizer on a small embedded corpus (Python, shell,
the `<tool: NAME>` tags), gives it ChatML special tokens and template, and saves it next to a
randomly initialised two-layer Qwen2 model. The directory loads with `AutoTokenizer` and
`AutoModelForCausalLM.from_pretrained` like any checkpoint. Everything is seeded, and the result
is cached under `$FORAGER_HOME/models/tiny-<hash of the recipe>`.

The weights are random, with one deliberate exception: a constant channel in the residual stream
gives `<|im_end|>` a fixed logit bonus (at temperature 1 a turn ends on its own after a few dozen
tokens, as a chat model's does) and `<|im_start|>` / `<|endoftext|>` a large malus (never sampled).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forager.core import ForagerError
from forager.files import atomic_directory, content_digest
from forager.home import forager_home

RECIPE_VERSION = 1
"""Bump when the recipe changes in a way the hash of the constants below does not see."""
SEED = 0
VOCAB_SIZE = 1024
END_OF_TURN = "<|im_end|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", END_OF_TURN]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": False,
}
BIAS_CHANNEL = 0.16
"""Value of residual channel 0 for every token: about the norm of the other 63 channels at init."""
END_OF_TURN_LOGIT = 3.0
SPECIAL_TOKEN_LOGIT = -30.0
DONE_MARKER = "forager-tiny-model.json"

CORPUS = [
    # Python
    "import os\nimport sys\nimport json\nimport re\nfrom pathlib import Path\nfrom typing import Any\n",
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n",
    "def read_config(path: str) -> dict[str, Any]:\n    with open(path) as f:\n        return json.load(f)\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue\n",
    "try:\n    value = int(text)\nexcept ValueError as err:\n    raise RuntimeError(f'bad value: {text}') from err\n",
    "def test_add():\n    assert add(1, 2) == 3\n    assert add(-1, 1) == 0\n",
    "import pytest\n\n\n@pytest.mark.parametrize('x, y', [(1, 2), (3, 4)])\ndef test_pairs(x, y):\n"
    "    assert x < y\n",
    "if __name__ == '__main__':\n    main(sys.argv[1:])\n",
    "return self.name.strip().lower() if self.name is not None else ''\n",
    "result = [x * x for x in values if x > 0]\ncounts = {k: len(v) for k, v in groups.items()}\n",
    "def greet(name):\n    return 'hello ' + name\n\n\ndef twice(x):\n    return x + x\n",
    "Traceback (most recent call last):\n  File \"test_math.py\", line 3, in test_add\n"
    "AssertionError: assert 4 == 3\n",
    "===== 1 failed, 12 passed in 0.31s =====\n===== 13 passed in 0.29s =====\nFAILED tests/test_math.py::test_add\n",
    # shell
    "ls -la\ncd src && ls\ncat setup.py\ngrep -rn 'def add' .\nfind . -name '*.py' | head\n",
    "python -m pytest -q tests/test_math.py 2>&1 | tail -n 15\npip install -e .\ngit status\ngit diff\n",
    "sed -n 1,40p src/math_utils.py\nwc -l README.md\necho done\nexport PATH=$HOME/bin:$PATH\n",
    # tool tags, as the agent prompt writes them
    "Let me run the failing tests.\n<tool: bash>\npython -m pytest -q 2>&1 | tail -n 15\n</tool>\n",
    "Let me look at the code involved.\n<tool: view>\n"
    "{\"path\": \"src/math_utils.py\", \"view_range\": [1, 20]}\n</tool>\n",
    "This is the bug; here is the fix.\n<tool: str_replace>\n"
    "{\"path\": \"src/math_utils.py\", \"old_str\": \"return a - b\", \"new_str\": \"return a + b\"}\n</tool>\n",
    "<tool: create>\n{\"path\": \"notes.txt\", \"file_text\": \"hello\"}\n</tool>\n",
    "<tool: insert>\n{\"path\": \"a.py\", \"insert_line\": 3, \"insert_text\": \"pass\"}\n</tool>\n",
    "The tests pass now; submitting.\n<tool: submit>\n</tool>\n",
    # prose, and the ChatML roles
    "system\nuser\nassistant\ntool\n",
    "You are a software engineer. Fix the bug in the repository so that the failing tests pass.\n"
    "Use one tool per reply. The command exited with code 1. Remaining budget: 12 turns.\n",
]


def recipe_hash() -> str:
    """What the built directory depends on: a different recipe (or transformers release) is another model."""
    import transformers  # its file layout changes between releases (chat_template.jinja, tokenizer class)

    recipe = {"version": RECIPE_VERSION, "transformers": transformers.__version__, "seed": SEED,
              "vocab": VOCAB_SIZE, "special": SPECIAL_TOKENS, "template": CHAT_TEMPLATE, "config": MODEL_CONFIG,
              "bias": [BIAS_CHANNEL, END_OF_TURN_LOGIT, SPECIAL_TOKEN_LOGIT], "corpus": CORPUS}
    return content_digest(recipe)


def build_tiny_model(path: str | Path | None = None) -> Path:
    """The tiny model's directory, built once (under `$FORAGER_HOME/models` unless `path` is given)."""
    target = Path(path) if path is not None else forager_home() / "models" / f"tiny-{recipe_hash()}"
    if (target / DONE_MARKER).exists():
        return target
    if target.exists() and any(target.iterdir()):
        raise ForagerError(f"{target} exists and is not a tiny model: remove it or pass another path")
    # Built beside the target and renamed: a concurrent builder or a crash never leaves half a model.
    with atomic_directory(target, DONE_MARKER) as staging:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(staging)
        _build_model(tokenizer).save_pretrained(staging)
        (staging / DONE_MARKER).write_text(json.dumps({"recipe": recipe_hash(), "vocab_size": len(tokenizer)}))
    return target


def build_tokenizer() -> Any:
    """Byte-level BPE trained on CORPUS, ChatML special tokens and template (a PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=END_OF_TURN, pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS, model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _build_model(tokenizer: Any) -> Any:
    """A seeded, randomly initialised Qwen2 with the end-of-turn bias (see the module docstring)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2Config(vocab_size=len(tokenizer), eos_token_id=ids[END_OF_TURN],
                         pad_token_id=ids["<|endoftext|>"], bos_token_id=None, **MODEL_CONFIG)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config).float().eval()
    with torch.no_grad():
        # Channel 0 of the residual stream is the same constant for every token and nothing writes
        # to it, so the lm_head's column 0 acts as a per-token logit bias.
        model.model.embed_tokens.weight[:, 0] = BIAS_CHANNEL
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0  # (hidden, heads * head_dim): row 0 writes channel 0
            layer.mlp.down_proj.weight[0] = 0.0
        scale = _channel_scale(model)
        head = model.lm_head.weight  # (vocab, hidden)
        head[:, 0] = 0.0
        head[ids[END_OF_TURN], 0] = END_OF_TURN_LOGIT / scale
        for token in ("<|im_start|>", "<|endoftext|>"):
            head[ids[token], 0] = SPECIAL_TOKEN_LOGIT / scale
    model.generation_config = GenerationConfig(eos_token_id=ids[END_OF_TURN], pad_token_id=ids["<|endoftext|>"])
    return model


def _channel_scale(model: Any) -> float:
    """The mean value of channel 0 after the final norm, over a few positions of a random input."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(0, model.config.vocab_size, (1, 64), generator=generator)
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids).last_hidden_state  # (1, T, hidden), after the final norm
    return float(hidden[0, :, 0].mean())
