"""The test server's chat model without weights: a byte tokenizer, a ChatML-like template, fixed logprobs.

- token id = UTF-8 byte value (0-255); `<|endoftext|>` = 256, `<|im_start|>` = 257, `<|im_end|>` = 258;
- a message renders as `<|im_start|>{role}\\n{content}<|im_end|>\\n` and the generation prompt as
  `<|im_start|>assistant\\n`;
- the logprob of the token at position i is `toy_logprob(token_id, i)`: deterministic and negative.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

END_OF_TEXT, IM_START, IM_END = 256, 257, 258
SPECIAL_TOKENS = {END_OF_TEXT: "<|endoftext|>", IM_START: "<|im_start|>", IM_END: "<|im_end|>"}


def encode(text: str) -> list[int]:
    """Token ids of plain text: its UTF-8 bytes (special-token spellings in text stay bytes)."""
    return list(text.encode("utf-8"))


def decode(token_ids: Sequence[int]) -> str:
    """Text of token ids; special ids spell their names, broken UTF-8 becomes U+FFFD."""
    data = bytearray()
    for token_id in token_ids:
        data += bytes([token_id]) if token_id < 256 else SPECIAL_TOKENS[token_id].encode()
    return data.decode("utf-8", errors="replace")


def toy_logprob(token_id: int, position: int) -> float:
    """The logprob the server reports for `token_id` sampled at `position` of the completion."""
    return -round(0.01 * (1 + (token_id * 31 + position * 7) % 97), 4)


def assistant_text(content: str | None, tool_calls: Sequence[dict[str, Any]] | None) -> str:
    """What the model 'generated' for an assistant message: its text, then each call in a tag."""
    blocks = []
    for call in tool_calls or []:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                pass  # malformed arguments render as the string the model produced
        blocks.append("<tool_call>\n" + json.dumps({"name": function["name"], "arguments": arguments}) + "\n</tool_call>")
    content = content or ""
    return content + ("\n" if content and blocks else "") + "\n".join(blocks)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def render_chat(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None,
                add_generation_prompt: bool = True) -> list[int]:
    """The chat template: the prompt token ids the server reports for these messages."""
    blocks: list[tuple[str, str]] = []
    if tools:
        blocks.append(("tools", json.dumps([tool.get("function", tool) for tool in tools])))
    for message in messages:
        text = _content_text(message.get("content"))
        if message.get("role") == "assistant" and message.get("tool_calls"):
            text = assistant_text(text, message["tool_calls"])
        blocks.append((message.get("role", "user"), text))
    ids: list[int] = []
    for role, text in blocks:
        ids += [IM_START, *encode(f"{role}\n{text}"), IM_END, *encode("\n")]
    if add_generation_prompt:
        ids += [IM_START, *encode("assistant\n")]
    return ids


def parse_chat(token_ids: Sequence[int]) -> list[dict[str, str]]:
    """The messages a prompt rendered by `render_chat` holds (the generation prompt left out): what a scripted
    responder sees of a token-in request."""
    messages, current = [], None
    for token_id in token_ids:
        if token_id == IM_START:
            current = []
        elif token_id == IM_END and current is not None:
            role, _, content = decode(current).partition("\n")
            messages.append({"role": role, "content": content})
            current = None
        elif current is not None:
            current.append(token_id)
    return [m for m in messages if m["role"] != "tools"]


class ToyTokenizer:
    """The toy model's tokenizer with the transformers methods `forager.policies.chat_tokens.ChatTokens` uses, so a
    client's token-in-token-out path runs against the test server exactly as against vLLM with a real model."""

    chat_template = "toy ChatML (forager.testing.toy_chat.render_chat)"
    eos_token_id = IM_END
    name_or_path = "toy-model"

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None,
                            tokenize: bool = False, add_generation_prompt: bool = False) -> Any:
        ids = render_chat(messages, tools, add_generation_prompt=add_generation_prompt)
        return ids if tokenize else decode(ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Bytes, with the special tokens' spellings read as their ids (as a real tokenizer reads them)."""
        ids: list[int] = []
        rest = text
        while rest:
            found = [(rest.find(spelling), token_id, spelling) for token_id, spelling in SPECIAL_TOKENS.items()]
            found = [f for f in found if f[0] >= 0]
            if not found:
                ids += encode(rest)
                break
            at, token_id, spelling = min(found)
            ids += [*encode(rest[:at]), token_id]
            rest = rest[at + len(spelling):]
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return decode([t for t in token_ids if not (skip_special_tokens and t in SPECIAL_TOKENS)])
