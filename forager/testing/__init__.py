"""Test helpers that ship with Forager, so tests, benchmarks and dry runs need no GPU and no model hub.

`openai_server`: a real OpenAI-compatible HTTP server that answers as vLLM does, with the toy tokenizer
and chat template of `toy_chat` (exported here; stdlib only). `tiny_model`: a tiny transformers checkpoint built locally (import
`forager.testing.tiny_model` itself: it needs the `train` extra).
"""

from forager.testing.openai_server import (
    OpenAIServer,
    ReceivedRequest,
    Reply,
    Responder,
    assistant_turns,
    by_conversation,
    context_length_error,
    episode,
    fail_first,
    replies,
)
from forager.testing.toy_chat import END_OF_TEXT, IM_END, IM_START, assistant_text, decode, encode, render_chat, toy_logprob

__all__ = [
    "END_OF_TEXT", "IM_END", "IM_START", "OpenAIServer", "ReceivedRequest", "Reply", "Responder",
    "assistant_text", "assistant_turns", "by_conversation", "context_length_error", "decode", "encode",
    "episode", "fail_first", "render_chat", "replies", "toy_logprob",
]
