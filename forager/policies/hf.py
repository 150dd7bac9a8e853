"""A policy over a local transformers causal LM, with the exact tokens it sampled and their logprobs.

Logprobs: each entry of `PolicyOutput.logprobs` is `log_softmax(logits / temperature)[token]`, the
log-probability of the sampled token under the model's distribution at temperature T, before top-k
and top-p. Those two only choose which tokens may be drawn; leaving them out of the reported value
keeps it equal to what the learner recomputes from a teacher-forced forward pass (it applies the
temperature and nothing else), and with top_k=0, top_p=1 (the RL setting) it is exactly the
distribution sampled from. With temperature 0 (greedy) the logprob is at temperature 1. In float32
(the CPU default) they agree with a teacher-forced forward pass within 1e-4; in bfloat16 (the GPU
default) prefill and decode kernels round differently, so expect ~1e-2.

Token-in, token-out: given `prefix_token_ids`, only the messages after the last assistant message
are rendered and tokenized, and appended to the prefix as is (`forager.policies.chat_tokens`).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from forager.core import ContextLengthExceeded, Message, PolicyError, PolicyOutput, Task
from forager.policies.chat_tokens import ChatTokens, PrefixMismatchWarning, stop_ids
from forager.policies.models import resolve_model

class HFPolicy:
    """Samples from a transformers causal LM with its KV cache, one request at a time (a lock guards it)."""

    name = "hf"

    def __init__(self, model: str | Path, *, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 max_tokens: int = 1024, seed: int | None = None, max_context: int | None = None,
                 policy_version: int = 0, device: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = str(model)
        source = resolve_model(self.model)  # a known name (smollm2-135m-instruct) is converted once, offline
        self.temperature, self.top_p, self.top_k, self.max_tokens = temperature, top_p, top_k, max_tokens
        self.policy_version = policy_version
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if not self.tokenizer.chat_template:
            raise PolicyError(f"{self.model} has no chat template: use an instruction-tuned model")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.float32 if self.device == "cpu" else torch.bfloat16)
        # transformers renamed `torch_dtype` to `dtype` in 4.56.
        dtype_kw = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
        self.lm = AutoModelForCausalLM.from_pretrained(
            source, trust_remote_code=trust_remote_code, **{dtype_kw: torch_dtype}).to(self.device).eval()
        config = self.lm.config
        self.max_context: int = (max_context or getattr(config, "max_position_embeddings", None)
                                 or self.tokenizer.model_max_length)
        self.stop_ids = stop_ids(self.tokenizer, self.lm.config, getattr(self.lm, "generation_config", None))
        self.chat = ChatTokens(self.tokenizer, self.stop_ids)
        params = inspect.signature(self.lm.forward).parameters
        # Keep only the last position's logits of the prompt: the whole (prompt, vocab) matrix is GBs.
        self._last_logits = ({"logits_to_keep": 1} if "logits_to_keep" in params
                             else {"num_logits_to_keep": 1} if "num_logits_to_keep" in params else {})
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self._lock = threading.Lock()

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        started = time.monotonic()
        prompt = self.prompt_ids(messages, prefix_token_ids=prefix_token_ids, tools=tools)
        room = self.max_context - len(prompt)
        if room <= 0:
            raise ContextLengthExceeded(
                f"the prompt has {len(prompt)} tokens and the context window {self.max_context}: no room to reply")
        budget = min(max_tokens or self.max_tokens, room)
        with self._lock:
            version = self.policy_version
            token_ids, logprobs = self._sample(prompt, budget)
        stopped = bool(token_ids) and token_ids[-1] in self.stop_ids
        return PolicyOutput(
            text=self.tokenizer.decode(token_ids, skip_special_tokens=True), token_ids=token_ids,
            logprobs=logprobs, prompt_token_ids=prompt, finish_reason="stop" if stopped else "length",
            policy_version=version, prompt_tokens=len(prompt), completion_tokens=len(token_ids),
            latency_s=time.monotonic() - started)

    def generate(self, prompt_ids: list[int], max_tokens: int, *,
                 temperature: float | None = None) -> tuple[list[int], list[float], int]:
        """A reply sampled for exact prompt ids (a server's token-in path): its ids, their logprobs and the policy
        version that sampled it; `temperature` replaces the policy's for this call."""
        with self._lock:
            kept = self.temperature
            self.temperature = kept if temperature is None else temperature
            try:
                token_ids, logprobs = self._sample(list(prompt_ids), max(0, min(max_tokens, self.max_context - len(prompt_ids))))
            finally:
                self.temperature = kept
            return token_ids, logprobs, self.policy_version

    def prompt_ids(self, messages: list[Message], *, prefix_token_ids: list[int] | None = None,
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The prompt's tokens: `prefix_token_ids` + the new messages' tokens, or the whole conversation's
        (`forager.policies.chat_tokens.ChatTokens.prompt_ids`)."""
        return self.chat.prompt_ids(messages, prefix_token_ids=prefix_token_ids, tools=tools)

    def update_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]], policy_version: int) -> None:
        """Copy new weights (from the learner) into the model in place, between two generations, and name them.

        `weights` maps state-dict names to tensors (any dtype or device: each is cast on copy). Strict, as
        `load_state_dict`: every weight once (a tied one under either name), nothing unknown, the same
        shapes; all of it is checked before any weight changes, so a bad update leaves the weights and the
        version as they were. In place, so nothing that holds the parameters needs to see new tensors.
        """
        import torch

        pairs = list(weights.items() if isinstance(weights, Mapping) else weights)
        targets = _update_targets(self.lm, pairs)
        with self._lock, torch.no_grad():
            for target, (_, tensor) in zip(targets, pairs):
                target.copy_(tensor)
            self.policy_version = policy_version

    # -- sampling ------------------------------------------------------------------------------
    def _sample(self, prompt: list[int], budget: int) -> tuple[list[int], list[float]]:
        import torch

        token_ids: list[int] = []
        logprobs: list[float] = []
        input_ids = torch.tensor([prompt], device=self.device)  # (1, T) first, then (1, 1) per step
        past = None
        with torch.inference_mode():
            for step in range(budget):
                extra = self._last_logits if step == 0 else {}
                out = self.lm(input_ids=input_ids, past_key_values=past, use_cache=True, **extra)
                past = out.past_key_values
                token, logprob = self._pick(out.logits[0, -1].float())  # logits: (1, T or 1, vocab)
                token_ids.append(token)
                logprobs.append(logprob)
                if token in self.stop_ids:
                    break
                input_ids = torch.tensor([[token]], device=self.device)
        return token_ids, logprobs

    def _pick(self, logits: Any) -> tuple[int, float]:
        """One token drawn from `logits` (vocab,) and its logprob at the temperature (see the module docstring)."""
        import torch

        if self.temperature <= 0:
            token = int(torch.argmax(logits))
            return token, float(torch.log_softmax(logits, dim=-1)[token])
        scaled = logits / self.temperature
        logp = torch.log_softmax(scaled, dim=-1)
        allowed = scaled
        if 0 < self.top_k < allowed.numel():
            kth = torch.topk(allowed, self.top_k).values[-1]
            allowed = allowed.masked_fill(allowed < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(allowed, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            drop = (probs.cumsum(-1) - probs) >= self.top_p  # the mass before a token already reaches top_p
            allowed = allowed.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        token = int(torch.multinomial(torch.softmax(allowed, dim=-1), 1, generator=self._generator))
        return token, float(logp[token])


def _update_targets(lm: Any, pairs: list[tuple[str, Any]]) -> list[Any]:
    """The model's tensor for each (name, tensor) of a weight update, after checking the update is whole."""
    own = lm.state_dict(keep_vars=True)  # parameters and persistent buffers; tied weights under each name
    unknown = [name for name, _ in pairs if name not in own]
    wrong = [f"{name} {tuple(t.shape)} != {tuple(own[name].shape)}" for name, t in pairs
             if name in own and tuple(t.shape) != tuple(own[name].shape)]
    first: dict[int, tuple[str, Any]] = {}
    tied = []  # one weight under two names (tied embeddings) given two different values: which is meant?
    for name, tensor in (pair for pair in pairs if pair[0] in own):
        earlier = first.setdefault(id(own[name]), (name, tensor))
        if earlier[1] is not tensor and earlier[1].shape == tensor.shape and not _same_values(earlier[1], tensor):
            tied.append(f"{earlier[0]} != {name}")
    missing = [name for name, tensor in own.items() if id(tensor) not in first]
    if unknown or wrong or missing or tied:
        parts = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                 for label, names in (("unknown", unknown), ("wrong shape", wrong), ("missing", missing),
                                      ("tied weights differ", tied)) if names]
        raise PolicyError(f"weight update refused, nothing was changed ({'; '.join(parts)}): send every weight "
                          "of this architecture by its state-dict name")
    return [own[name].data for name, _ in pairs]


def _same_values(a: Any, b: Any) -> bool:
    import torch

    return a.data_ptr() == b.data_ptr() or torch.equal(a.to(b.device, b.dtype), b)


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


__all__ = ["HFPolicy", "PrefixMismatchWarning"]
