"""Token-in, token-out: a conversation's prompt as the previous turn's exact token ids plus the new messages.

A trainer trains on the tokens the sampler saw, so no turn may re-tokenize the history: the sampled
tokens of an assistant message are kept as they came, and only the messages after it (the tool's
observation, a user message) are rendered by the chat template and appended. `ChatTokens` does that
for every client that holds a tokenizer: the `hf` policy in process, and the `openai` policy in its
completions mode, which sends the ids to a vLLM server so that no server ever re-renders the conversation.

The new messages are rendered after a stand-in exchange (a user message and an assistant message whose
content is a marker), and the text after the marker is what they add. Nothing of the real history is
rendered, so a template that rewrites earlier turns (Qwen3 drops the reasoning of every assistant turn
before the last user message) changes nothing: the prompt stays the sampled tokens plus the delta.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from forager.core import Message, PolicyError

MARK = "<forager:end-of-content>"
_STAND_IN = {"role": "user", "content": "forager"}


class PrefixMismatchWarning(UserWarning):
    """The new messages cannot be appended to `prefix_token_ids`: the whole conversation was rendered again."""


class ChatTokens:
    """A tokenizer with its chat template and stop tokens, rendering prompts that extend earlier turns."""

    def __init__(self, tokenizer: Any, stop_ids: set[int]) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise PolicyError(f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')} has no chat template: "
                              "use an instruction-tuned model")
        self.tokenizer, self.stop_ids = tokenizer, set(stop_ids)

    @classmethod
    def load(cls, source: str | Path, *, trust_remote_code: bool = False) -> ChatTokens:
        """The tokenizer of a model directory or hub id, with the stop tokens its configs name (no weights loaded)."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise PolicyError(f"cannot load the tokenizer of {source}: {err}; token-in-token-out needs the "
                              "served model's tokenizer (pass tokenizer=DIR)") from err
        configs: list[Any] = []
        for kind in (AutoConfig, GenerationConfig):
            try:
                configs.append(kind.from_pretrained(str(source), trust_remote_code=trust_remote_code)
                               if kind is AutoConfig else kind.from_pretrained(str(source)))
            except (OSError, ValueError):
                pass  # a tokenizer-only directory, or no generation_config.json: the tokenizer's eos is enough
        return cls(tokenizer, stop_ids(tokenizer, *configs))

    def prompt_ids(self, messages: list[Message], *, prefix_token_ids: list[int] | None = None,
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        """`prefix_token_ids` + the tokens of the messages after the last assistant message and of the generation
        prompt; without a prefix (or when the delta cannot be found: a PrefixMismatchWarning) the whole rendering."""
        if prefix_token_ids:
            delta = self.delta_text(messages, prefix_token_ids, tools)
            if delta is not None:
                return list(prefix_token_ids) + self.encode(delta)
        return self.encode(self.render(messages, tools, generation_prompt=True))

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def delta_text(self, messages: list[Message], prefix_token_ids: list[int],
                   tools: list[dict[str, Any]] | None) -> str | None:
        """The text that follows the sampled tokens of the last assistant message, or None (with a warning).

        It is what the template writes after an assistant message's content (ChatML: `<|im_end|>\\n`), then the
        new messages and the generation prompt, all rendered after a stand-in exchange. The sampled tokens end
        with the stop token, where that closing text starts, so its spelling is left out; after a `length`
        finish the whole closing text is the prompt's."""
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            return _mismatch("prefix_token_ids were given but the conversation has no assistant message")
        stand_in = [*([messages[0]] if messages[0].get("role") == "system" else []), _STAND_IN,
                    {"role": "assistant", "content": MARK}]
        rendered = self.render([*stand_in, *messages[last + 1:]], tools, generation_prompt=True)
        at = rendered.find(MARK)
        if at < 0:
            return _mismatch("the chat template does not render an assistant message's content as it is")
        after = rendered[at + len(MARK):]
        tail = self.tokenizer.decode(prefix_token_ids[-1:])
        consumed = tail if prefix_token_ids[-1] in self.stop_ids and after.startswith(tail) else ""
        return after[len(consumed):]


def stop_ids(tokenizer: Any, *configs: Any) -> set[int]:
    """The tokenizer's eos and every eos id the model's configs name (chat models often have two)."""
    ids = {tokenizer.eos_token_id}
    for config in configs:
        eos = getattr(config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {i for i in ids if i is not None}


def _mismatch(why: str) -> None:
    warnings.warn(f"{why}; rendering the whole conversation again (this turn's prefix is re-tokenized)",
                  PrefixMismatchWarning, stacklevel=4)
    return None


__all__ = ["ChatTokens", "MARK", "PrefixMismatchWarning", "stop_ids"]
