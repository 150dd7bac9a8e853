"""A real OpenAI-compatible chat server that answers as vLLM does, for tests, benchmarks and dry runs.

It speaks HTTP on 127.0.0.1 (stdlib `ThreadingHTTPServer` in a background thread) and tokenizes with
a deterministic toy tokenizer, so a test can check token ids exactly:

- token id = UTF-8 byte value (0-255); `<|endoftext|>` = 256, `<|im_start|>` = 257, `<|im_end|>` = 258;
- a message renders as `<|im_start|>{role}\\n{content}<|im_end|>\\n` and the generation prompt as
  `<|im_start|>assistant\\n`; `prompt_token_ids` is that rendering of the request's messages;
- a reply's token ids are the bytes of its text followed by `<|im_end|>`, so the next turn's prompt
  extends the previous prompt and completion token for token (as a real chat template does);
- the logprob of the token at position i is `toy_logprob(token_id, i)`: deterministic and negative.

What it answers is scripted by a `responder(request_json) -> Reply`:

    with OpenAIServer(fail_first(2, then=replies("hello"))) as server:
        OpenAIPolicy(server.base_url, model=server.model).act([...])

`/v1/completions` takes prompt token ids (token-in-token-out) and answers in vLLM's completions shape; a
responder sees the conversation parsed back from them (`toy_chat.parse_chat`) under `messages`.

Backed by a real model (`OpenAIServer(generator=HFPolicy(...))`, or `python -m forager.testing.openai_server
--model DIR` as a process), it samples with that model instead, and serves what a dev-mode vLLM server adds
for training: `/pause`, `/resume`, `/is_paused` and `/collective_rpc`, whose methods run on a worker that
mixes in the `--worker-extension-cls` class over the model (vLLM's worker has `model_runner.model`, `device`
and `rank`; so does this one). So the trainer's vLLM engine, its weight group (gloo here, NCCL on GPUs) and
the worker extension run here for real; only vLLM's kernels and NCCL itself are not. Pausing holds new
generations until `/resume`; one in flight finishes first (vLLM's `mode=wait`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from forager.testing.toy_chat import (
    IM_END,
    ToyTokenizer,
    assistant_text,
    decode,
    encode,
    parse_chat,
    render_chat,
    toy_logprob,
)

log = logging.getLogger(__name__)

VLLM_TOKEN_FIELDS = ("return_token_ids", "return_tokens_as_token_ids")
"""Request fields only vLLM knows; a server made with `reject_unknown_fields=True` refuses them."""


# -- scripting -----------------------------------------------------------------------------------
@dataclass
class Reply:
    """One scripted answer of the server."""

    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    """Function calls, each `{"name", "arguments"}` (arguments a dict or a JSON string) or in the
    OpenAI form `{"id", "type", "function": {"name", "arguments"}}`."""
    finish_reason: str | None = None
    """Defaults to `tool_calls` when there are calls, else `stop`; `length` when max_tokens cuts it."""
    status: int = 200
    """Anything but 200 answers an error: `body` if given, else a vLLM-shaped error with `message`."""
    message: str = ""
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (e.g. `Retry-After`)."""
    delay_s: float = 0.0
    """Wait this long before answering (to provoke client timeouts)."""
    token_ids: bool = True
    """False: answer as a plain OpenAI server would, with no token ids and no logprobs."""


Responder = Callable[[dict[str, Any]], "Reply | str"]


def _as_responder(script: Responder | Reply | str) -> Responder:
    if isinstance(script, (Reply, str)):
        return lambda request: script
    return script


def _script_exhausted(what: str) -> Reply:
    # 400, not 500: a client does not retry it, so a test that runs past its script fails at once.
    return Reply(status=400, message=f"scripted server: {what}")


def replies(*script: Reply | str) -> Responder:
    """Serve these replies in order, one per request; a request past the end gets a 400."""
    lock, served = threading.Lock(), [0]

    def respond(request: dict[str, Any]) -> Reply | str:
        with lock:
            index = served[0]
            served[0] += 1
        if index >= len(script):
            return _script_exhausted(f"no reply left (the script has {len(script)})")
        return script[index]

    return respond


def fail_first(n: int, status: int = 500, then: Responder | Reply | str = "ok", message: str = "") -> Responder:
    """Answer the first `n` requests with `status`, every later one with `then`."""
    lock, seen = threading.Lock(), [0]
    after = _as_responder(then)

    def respond(request: dict[str, Any]) -> Reply | str:
        with lock:
            seen[0] += 1
            failing = seen[0] <= n
        if failing:
            return Reply(status=status, message=message or f"scripted failure {seen[0]} of {n}")
        return after(request)

    return respond


def assistant_turns(messages: Sequence[dict[str, Any]]) -> int:
    """How many assistant messages the conversation holds: the step index of the next reply."""
    return sum(1 for message in messages if message.get("role") == "assistant")


def by_conversation(next_reply: Callable[[list[dict[str, Any]]], Reply | str]) -> Responder:
    """Answer with `next_reply(messages)`: the reply as a function of the conversation so far."""
    return lambda request: next_reply(request.get("messages") or [])


def episode(steps: Sequence[Reply | str]) -> Responder:
    """A multi-turn script: step i answers a conversation that holds i assistant messages."""

    def next_reply(messages: list[dict[str, Any]]) -> Reply | str:
        step = assistant_turns(messages)
        if step >= len(steps):
            return _script_exhausted(f"the episode has {len(steps)} steps; asked for step {step + 1}")
        return steps[step]

    return by_conversation(next_reply)


# -- the server ----------------------------------------------------------------------------------
@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None


def _vllm_error(status: int, message: str, error_type: str = "BadRequestError", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


def context_length_error(max_model_len: int, prompt_tokens: int, max_tokens: int | None) -> str | None:
    """vLLM's 400 text when the prompt (and max_tokens) do not fit, or None when they do."""
    if prompt_tokens >= max_model_len:
        return (f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages. "
                f"(parameter=input_tokens, value={prompt_tokens})")
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        return (f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                f"context length is {max_model_len} tokens and your request has {prompt_tokens} input tokens "
                f"({max_tokens} > {max_model_len} - {prompt_tokens}). (parameter=max_tokens, value={max_tokens})")
    return None


class OpenAIServer:
    """`/v1/models` and `/v1/chat/completions` (non-streaming) on 127.0.0.1, answered by a responder.

    `max_model_len` rejects prompts that do not fit with vLLM's 400; `api_key` requires that bearer
    token (401 otherwise); `reject_unknown_fields` answers vLLM-only request fields with a 400 as a
    strict hosted API does; `supports_return_token_ids=False` ignores `return_token_ids` as vLLM
    before 0.10.2 does (token ids then come only as `token_id:N` logprob tokens). Every request
    received is kept in `requests`.
    """

    def __init__(self, responder: Responder | Reply | str = "ok", *, model: str = "toy-model",
                 max_model_len: int | None = None, api_key: str | None = None,
                 reject_unknown_fields: bool = False, supports_return_token_ids: bool = True,
                 port: int = 0, generator: Any = None, worker_extension: str | type | None = None,
                 dev_mode: bool = True, host: str = "127.0.0.1") -> None:
        """`generator`: a model to sample with (an `HFPolicy`) instead of the responder; `worker_extension`: the
        class (or `module:Class`) mixed into its worker for `/collective_rpc`; `dev_mode=False` hides the
        training endpoints, as vLLM without VLLM_SERVER_DEV_MODE does."""
        self.responder = _as_responder(responder)
        self.generator = generator
        self.dev_mode = dev_mode
        self.worker = _make_worker(generator, worker_extension) if generator is not None else None
        if generator is not None and max_model_len is None:
            max_model_len = generator.max_context
        self._resumed = threading.Event()
        self._resumed.set()
        self.model = model
        self.max_model_len = max_model_len
        self.api_key = api_key
        self.reject_unknown_fields = reject_unknown_fields
        self.supports_return_token_ids = supports_return_token_ids
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests received, in order."""
        with self._lock:
            return [r.json for r in self.requests if r.path.endswith("/chat/completions")]

    def start(self) -> OpenAIServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"openai-server-{self.port}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (idempotent); replies still sleeping in `delay_s` are abandoned."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- answering ---------------------------------------------------------------------------------
    def handle(self, request: ReceivedRequest) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(request)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": "Unauthorized"}, {}
        if request.method == "GET" and request.path in ("/v1/models", "/models"):
            return 200, self._models(), {}
        if request.method == "GET" and request.path == "/health":
            return 200, None, {}
        if self.dev_mode and (answer := self._training_endpoint(request)) is not None:
            return answer
        if request.method == "POST" and request.path in ("/v1/completions", "/completions"):
            try:
                return self._complete(request.json)
            except Exception as err:  # noqa: BLE001 (as a crashed server would)
                log.exception("the completion failed")
                return 500, _vllm_error(500, f"the completion failed: {type(err).__name__}: {err}",
                                        "InternalServerError"), {}
        if request.method == "POST" and request.path in ("/v1/chat/completions", "/chat/completions"):
            try:
                return self._chat(request.json)
            except Exception as err:  # noqa: BLE001 (a broken script answers 500, as a crashed server would)
                log.exception("the responder failed")
                return 500, _vllm_error(500, f"the responder failed: {type(err).__name__}: {err}",
                                        "InternalServerError"), {}
        return 404, {"detail": "Not Found"}, {}

    # -- training endpoints (a dev-mode vLLM server's) ---------------------------------------------
    def _training_endpoint(self, request: ReceivedRequest) -> tuple[int, Any, dict[str, str]] | None:
        if request.method == "POST" and request.path == "/pause":
            self._resumed.clear()
            return 200, {"status": "paused"}, {}
        if request.method == "POST" and request.path == "/resume":
            self._resumed.set()
            return 200, {"status": "resumed"}, {}
        if request.method == "GET" and request.path == "/is_paused":
            return 200, {"is_paused": not self._resumed.is_set()}, {}
        if request.method == "POST" and request.path == "/collective_rpc":
            return self._collective_rpc(request.json)
        return None

    def _collective_rpc(self, body: Any) -> tuple[int, Any, dict[str, str]]:
        """vLLM's: `method` called on every worker (here one) with string args; `{"results": [...]}`."""
        if self.worker is None:
            return 400, {"detail": "this server has no model worker (start it with a model)"}, {}
        if not isinstance(body, dict) or not body.get("method"):
            return 400, {"detail": "Missing 'method' in request body"}, {}
        method = getattr(self.worker, str(body["method"]), None)
        if method is None:
            return 500, {"error": f"the worker has no method {body['method']!r}"}, {}
        try:
            result = method(*body.get("args", []), **body.get("kwargs", {}))
        except Exception as err:  # noqa: BLE001 - vLLM answers 500 with the worker's exception
            log.exception("collective_rpc %s failed", body["method"])
            return 500, {"error": f"{type(err).__name__}: {err}"}, {}
        return 200, {"results": [result if result is None or isinstance(result, (dict, list)) else str(result)]}, {}

    def _wait_resumed(self) -> bool:
        """Hold a generation while the server is paused; False when the server stops meanwhile."""
        while not self._resumed.wait(0.05):
            if self._stopping.is_set():
                return False
        return True

    # -- token-in-token-out -------------------------------------------------------------------------
    def _complete(self, body: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(body, dict) or body.get("prompt") is None:
            return 400, _vllm_error(400, "the request body must be a JSON object with `prompt`"), {}
        if body.get("model") not in (None, self.model):
            return 404, _vllm_error(404, f"The model `{body['model']}` does not exist.", "NotFoundError", "model"), {}
        prompt = body["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            prompt = self.generator.chat.encode(prompt) if self.generator is not None else ToyTokenizer().encode(prompt)
        max_tokens = body.get("max_tokens", 16)  # the completions API's default, as vLLM's
        if self.max_model_len is not None:
            if error := context_length_error(self.max_model_len, len(prompt), max_tokens):
                return 400, _vllm_error(400, error), {}
        if self.generator is not None:
            if not self._wait_resumed():
                return 503, _vllm_error(503, "server shutting down", "ServiceUnavailableError"), {}
            token_ids, logprobs, _ = self.generator.generate(prompt, max_tokens, temperature=body.get("temperature"))
            stopped = bool(token_ids) and token_ids[-1] in self.generator.stop_ids
            text = self.generator.chat.decode(token_ids)
            return 200, self._completion_response(body, prompt, text, token_ids, logprobs,
                                                  "stop" if stopped else "length"), {}
        reply, answer = self._scripted({**body, "messages": parse_chat(prompt)})
        if answer is not None:
            return answer
        text = assistant_text(reply.text, reply.tool_calls)
        token_ids = [*encode(text), IM_END]
        finish = reply.finish_reason or "stop"
        if max_tokens is not None and len(token_ids) > max_tokens:
            token_ids, finish = token_ids[:max_tokens], "length"
            text = decode(token_ids)
        logprobs = [toy_logprob(t, i) for i, t in enumerate(token_ids)] if reply.token_ids else None
        return 200, self._completion_response(body, prompt, text, token_ids if reply.token_ids else None,
                                              logprobs, finish), reply.headers

    def _completion_response(self, body: dict[str, Any], prompt: list[int], text: str, token_ids: list[int] | None,
                             logprobs: list[float] | None, finish_reason: str) -> dict[str, Any]:
        """vLLM's `/v1/completions` answer: `token_ids`/`prompt_token_ids` with `return_token_ids`, and logprobs
        whose tokens are spelled `token_id:N` with `return_tokens_as_token_ids`."""
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                                  "stop_reason": None}
        wants_ids = bool(body.get("return_token_ids")) and self.supports_return_token_ids
        if token_ids is not None:
            choice["token_ids"] = token_ids if wants_ids else None
            choice["prompt_token_ids"] = prompt if wants_ids else None
            if body.get("logprobs") is not None and logprobs is not None:
                spell = bool(body.get("return_tokens_as_token_ids"))
                tokens = [f"token_id:{t}" if spell else decode([t % 256]) for t in token_ids]
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": logprobs,
                                      "top_logprobs": [{tok: lp} for tok, lp in zip(tokens, logprobs)],
                                      "text_offset": list(range(len(tokens)))}
        completion = len(token_ids) if token_ids is not None else len(encode(text))
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion,
                          "total_tokens": len(prompt) + completion}}

    def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": self.model, "parent": None, "max_model_len": self.max_model_len}]}

    def _chat(self, body: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return 400, _vllm_error(400, "the request body must be a JSON object with `messages`"), {}
        if body.get("model") not in (None, self.model):
            return 404, _vllm_error(404, f"The model `{body['model']}` does not exist.", "NotFoundError", "model"), {}
        unknown = [name for name in VLLM_TOKEN_FIELDS if name in body]
        if self.reject_unknown_fields and unknown:
            return 400, {"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}",
                                   "type": "invalid_request_error", "param": None, "code": None}}, {}
        if self.generator is not None:
            return self._chat_with_model(body)
        prompt_ids = render_chat(body["messages"], body.get("tools"))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if self.max_model_len is not None:
            if error := context_length_error(self.max_model_len, len(prompt_ids), max_tokens):
                return 400, _vllm_error(400, error), {}
            if max_tokens is None:  # vLLM fills the rest of the context
                max_tokens = self.max_model_len - len(prompt_ids)
        reply, answer = self._scripted(body)
        if answer is not None:
            return answer
        return 200, self._completion(body, prompt_ids, max_tokens, reply), reply.headers

    def _scripted(self, body: dict[str, Any]) -> tuple[Reply, tuple[int, Any, dict[str, str]] | None]:
        """The responder's reply to `body`, and the answer to send instead of a completion (a scripted error, or a
        503 when the server stops during the reply's delay), else None."""
        reply = self.responder(body)
        reply = Reply(text=reply) if isinstance(reply, str) else reply
        if reply.delay_s and self._stopping.wait(reply.delay_s):
            return reply, (503, _vllm_error(503, "server shutting down", "ServiceUnavailableError"), {})
        if reply.status != 200:
            error = reply.body if reply.body is not None else _vllm_error(
                reply.status, reply.message or f"scripted error {reply.status}",
                "BadRequestError" if reply.status < 500 else "InternalServerError")
            return reply, (reply.status, error, reply.headers)
        return reply, None

    def _chat_with_model(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """The chat API over the real model: its template renders the messages (as vLLM's server does)."""
        chat = self.generator.chat
        prompt = chat.encode(chat.render(body["messages"], body.get("tools"), generation_prompt=True))
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or self.max_model_len - len(prompt)
        if error := context_length_error(self.max_model_len, len(prompt), max_tokens):
            return 400, _vllm_error(400, error), {}
        if not self._wait_resumed():
            return 503, _vllm_error(503, "server shutting down", "ServiceUnavailableError"), {}
        token_ids, logprobs, _ = self.generator.generate(prompt, max_tokens, temperature=body.get("temperature"))
        stopped = bool(token_ids) and token_ids[-1] in self.generator.stop_ids
        wants_ids = bool(body.get("return_token_ids"))
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": chat.decode(token_ids)},
                                  "logprobs": None, "finish_reason": "stop" if stopped else "length",
                                  "token_ids": token_ids if wants_ids else None}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": f"token_id:{t}", "logprob": lp, "bytes": None,
                                               "top_logprobs": []} for t, lp in zip(token_ids, logprobs)]}
        return 200, {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                     "model": self.model, "choices": [choice], "prompt_token_ids": prompt if wants_ids else None,
                     "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(token_ids),
                               "total_tokens": len(prompt) + len(token_ids)}}, {}

    def _completion(self, body: dict[str, Any], prompt_ids: list[int], max_tokens: int | None,
                    reply: Reply) -> dict[str, Any]:
        calls = [_openai_call(call) for call in reply.tool_calls or []]
        content: str | None = reply.text
        finish_reason = reply.finish_reason or ("tool_calls" if calls else "stop")
        stop_reason: str | None = None
        text_ids = encode(assistant_text(reply.text, calls))
        token_ids = [*text_ids, IM_END]
        stops = body.get("stop") or []
        found = [(bytes(text_ids).find(s.encode()), s) for s in ([stops] if isinstance(stops, str) else stops) if s]
        if found := sorted((at, stop) for at, stop in found if at >= 0):
            at, stop = found[0]
            # vLLM stops once the stop string is sampled: its tokens are in token_ids, not in the text.
            token_ids = text_ids[:at + len(stop.encode())]
            content, calls, finish_reason, stop_reason = decode(text_ids[:at]), [], "stop", stop
        if max_tokens is not None and len(token_ids) > max_tokens:
            token_ids = token_ids[:max_tokens]
            content, calls, finish_reason, stop_reason = decode(token_ids), [], "length", None
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else ""),
                                   "reasoning_content": None}
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                                  "finish_reason": finish_reason, "stop_reason": stop_reason}
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(token_ids),
                 "total_tokens": len(prompt_ids) + len(token_ids), "prompt_tokens_details": None}
        response: dict[str, Any] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                                    "created": int(time.time()), "model": self.model, "choices": [choice],
                                    "usage": usage}
        if not reply.token_ids:
            return response
        if body.get("logprobs"):
            choice["logprobs"] = {"content": _logprobs(token_ids, int(body.get("top_logprobs") or 0),
                                                       bool(body.get("return_tokens_as_token_ids")))}
        wants_ids = bool(body.get("return_token_ids")) and self.supports_return_token_ids
        choice["token_ids"] = token_ids if wants_ids else None
        response.update(service_tier=None, system_fingerprint=None, prompt_logprobs=None,
                        prompt_token_ids=prompt_ids if wants_ids else None, kv_transfer_params=None)
        return response


def _openai_call(call: dict[str, Any]) -> dict[str, Any]:
    """A scripted call (`{"name", "arguments"}` or the OpenAI form) as the API returns it."""
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    return {"id": call.get("id") or f"chatcmpl-tool-{uuid.uuid4().hex[:16]}", "type": "function", "function": {
        "name": function["name"], "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}


def _logprobs(token_ids: list[int], top: int, as_token_ids: bool) -> list[dict[str, Any]]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        token = f"token_id:{token_id}" if as_token_ids else decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = []
    for position, token_id in enumerate(token_ids):
        logprob = toy_logprob(token_id, position)
        alternatives = [entry(token_id, logprob)] + [
            entry((token_id + k) % 256, round(logprob - k, 4)) for k in range(1, top)]
        content.append({**entry(token_id, logprob), "top_logprobs": alternatives[:top]})
    return content


def _handler_for(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients with a connection pool expect
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                payload = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                payload = raw.decode("utf-8", errors="replace")
            request = ReceivedRequest(method, self.path.split("?")[0],
                                      {k.lower(): v for k, v in self.headers.items()}, payload)
            status, answer, headers = server.handle(request)
            data = b"" if answer is None else json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


# -- the model's worker (what vLLM's GPU worker is to its extension) ------------------------------
class _LoadableModel:
    """vLLM's model interface the worker extension uses, over a transformers model: `load_weights`, `state_dict`."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def load_weights(self, weights: Any) -> set[str]:
        pairs = list(weights)
        self.generator.update_weights(pairs, self.generator.policy_version + 1)  # between two generations
        return {name for name, _ in pairs}

    def state_dict(self) -> dict[str, Any]:
        return self.generator.lm.state_dict()


class ServerWorker:
    """The test server's one worker: rank 0, on the model's device, its model behind `model_runner.model`."""

    def __init__(self, generator: Any) -> None:
        import torch

        self.model_runner = type("ModelRunner", (), {})()
        self.model_runner.model = _LoadableModel(generator)
        self.device = torch.device(generator.device)
        self.rank = 0


def _make_worker(generator: Any, extension: str | type | None) -> Any:
    """The worker with the extension mixed in, as vLLM does with `--worker-extension-cls`."""
    if extension is None:
        return ServerWorker(generator)
    if isinstance(extension, str):
        import importlib

        module, _, name = extension.replace(":", ".").rpartition(".")
        extension = getattr(importlib.import_module(module), name)
    return type("ExtendedWorker", (ServerWorker, extension), {})(generator)


def main(argv: list[str] | None = None) -> int:
    """`python -m forager.testing.openai_server --model DIR --port P ...`: the real-model server as a process, taking
    the flags of `vllm serve` that matter here (others, such as --tensor-parallel-size, are accepted and ignored)."""
    import argparse
    import signal

    from forager.policies.hf import HFPolicy

    parser = argparse.ArgumentParser(prog="python -m forager.testing.openai_server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--worker-extension-cls", default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None)
    args, ignored = parser.parse_known_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    generator = HFPolicy(args.model, seed=args.seed, temperature=args.temperature, max_context=args.max_model_len)
    dev_mode = os.environ.get("VLLM_SERVER_DEV_MODE", "1") not in ("0", "")
    server = OpenAIServer(model=args.served_model_name or args.model, generator=generator, port=args.port,
                          worker_extension=args.worker_extension_cls, dev_mode=dev_mode, host=args.host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"serving {args.model} on {server.base_url} (ignored: {' '.join(ignored) or 'nothing'})", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
