"""A trainable engine without a model: each task's reference fix, in toy tokens, under a policy version counter.

`ScriptedEngine` has the shape of `forager.train.engines.Engine` (`version`, `act`, `update_weights`,
`close`), so the trainer's rollout side (groups, staleness, the synchronous gate, the store) runs end to
end in seconds, without torch. Its replies are the reference policy's actions; its tokens are the toy
byte tokenizer's (`toy_chat`: the prompt rendered by its ChatML template, each reply's bytes then
`<|im_end|>`), so every trajectory is trainable and token-exact across turns. Each reply names the
version current when it was sampled; `update_weights` only moves the counter.

So that a group's rewards differ (and its advantages are not all zero), every `fail_every`-th episode of
a task submits at once, unfixed. An episode is known by its first turn, counted per task.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from forager.core import Message, PolicyError, PolicyOutput, PolicyUnavailable, Task, ToolCall
from forager.policies.reference import as_cwm_text, reference_actions
from forager.testing.toy_chat import IM_END, encode, render_chat, toy_logprob


class ScriptedEngine:
    """The reference fix as a token-exact, versioned policy; `update_weights` bumps the version."""

    name = "scripted"

    def __init__(self, *, fail_every: int = 2, delay_s: float = 0.0,
                 before_act: Callable[[ScriptedEngine, list[Message]], None] | None = None) -> None:
        """`fail_every`: the n-th episode of each task (counting from 1) submits unfixed when n is a multiple of it;
        0: never. `delay_s`: seconds each reply takes, as a model's would. `before_act`: called before each
        reply with the engine and the conversation (tests use it to update weights mid-episode)."""
        if fail_every < 0 or delay_s < 0:
            raise ValueError(f"fail_every and delay_s must be >= 0, got {fail_every} and {delay_s}")
        self.fail_every, self.delay_s, self.before_act = fail_every, delay_s, before_act
        self.policy_version = 0
        self.updates = 0
        self.calls = 0
        self.closed = False
        self._episodes: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self.policy_version

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        started = time.monotonic()
        if self.closed:
            raise PolicyUnavailable("the scripted engine is closed")
        if task is None:
            raise PolicyError("the scripted engine needs the task (run it through the agent loop)")
        if self.before_act is not None:
            self.before_act(self, messages)
        if self.delay_s:
            time.sleep(self.delay_s)
        call = self._next_call(messages, task)
        text = as_cwm_text(call)
        prompt = render_chat(messages)
        token_ids = [*encode(text), IM_END]
        with self._lock:
            self.calls += 1
            version = self.policy_version  # the weights that sample this reply
        return PolicyOutput(
            text=text, token_ids=token_ids, logprobs=[toy_logprob(t, i) for i, t in enumerate(token_ids)],
            prompt_token_ids=prompt, finish_reason="stop", policy_version=version, prompt_tokens=len(prompt),
            completion_tokens=len(token_ids), latency_s=time.monotonic() - started)

    def _next_call(self, messages: list[Message], task: Task) -> ToolCall:
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if turn == 0:
            with self._lock:
                self._episodes[task.instance_id] += 1
                failing = bool(self.fail_every) and self._episodes[task.instance_id] % self.fail_every == 0
            if failing:
                return ToolCall(name="submit")
        try:
            actions = reference_actions(task)
        except ValueError as err:
            raise PolicyError(str(err)) from err
        return actions[turn] if turn < len(actions) else ToolCall(name="submit")

    def update_weights(self, weights: Any, policy_version: int) -> None:
        """Take "new weights" (ignored: there are none) and name them `policy_version`."""
        if self.closed:
            raise PolicyUnavailable("the scripted engine is closed")
        with self._lock:
            self.policy_version = policy_version
            self.updates += 1

    def close(self) -> None:
        self.closed = True

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": "reference-fix"}
