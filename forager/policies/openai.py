"""A policy over any OpenAI-compatible `/v1/chat/completions` server: vLLM first, SGLang, hosted APIs.

From vLLM it asks for the exact tokens: `return_token_ids` (vLLM >= 0.10.2) adds `prompt_token_ids`
to the response and `token_ids` to each choice; `logprobs` with `return_tokens_as_token_ids` spells
each logprob's token `token_id:N`, which also gives the ids on older vLLM. A server that returns
neither gives a text-only output (`PolicyOutput.trainable` is False). One policy object is shared by
many worker threads: the HTTP client is thread-safe and `act` keeps no per-call state on `self`.

Token-in, token-out (`api="completions"`, what the trainer uses): the policy holds the served model's
tokenizer and sends `/v1/completions` the exact prompt ids, the previous turn's prompt and sampled tokens
plus the new messages rendered as a template delta (`forager.policies.chat_tokens`), so the server never
renders the conversation and a template that rewrites earlier turns cannot change what was trained on.
The reply's text is parsed for tool calls by the agent (the server's tool-call parser is not involved).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import ssl
import threading
import time
from functools import cache
from typing import Any, Literal

import httpx

from forager.core import ContextLengthExceeded, Message, PolicyError, PolicyOutput, PolicyUnavailable, Task

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # `vllm serve`'s default address
TOKEN_FIELDS = ("logprobs", "top_logprobs", "return_token_ids", "return_tokens_as_token_ids")
_CONTEXT_PATTERNS = re.compile(
    r"maximum context length|context length is only|context window|maximum model length|"
    r"prompt is too long|too many tokens|is too large: \d+\. This model", re.IGNORECASE)
_HINTS = {
    401: "check the API key (api_key=, FORAGER_API_KEY or OPENAI_API_KEY)",
    403: "check the API key and that it may use this model",
    404: "check base_url (it usually ends in /v1) and the model name ({models} lists what is served)",
}


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


@cache
def _ssl_context() -> ssl.SSLContext:
    # Shared by every policy: building one costs ~80 ms, and httpx builds it even for plain http.
    return httpx.create_ssl_context()  # certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR, as httpx does


def _normalize_base_url(url: str) -> str:
    url = url.rstrip("/").removesuffix("/chat/completions")
    return url if httpx.URL(url).path.strip("/") else url + "/v1"


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    """(message, code) of an error body: OpenAI's `{"error": {...}}`, older vLLM's flat object, or text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:2000] or response.reason_phrase, None
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        code = error.get("code")
        return str(error.get("message") or error.get("detail") or error), (str(code) if code is not None else None)
    return str(error), None


class OpenAIPolicy:
    """Samples the next assistant message from an OpenAI-compatible chat server."""

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        temperature: float | None = 1.0,
        top_p: float | None = None,
        max_tokens: int | None = None,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: float = 600.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        request_token_ids: bool = True,
        top_logprobs: int = 0,
        policy_version: int = 0,
        max_connections: int = 256,
        api: Literal["chat", "completions"] = "chat",
        tokenizer: Any = None,
        max_context: int | None = None,
    ) -> None:
        """`base_url`, `model` and `api_key` fall back to FORAGER_BASE_URL / OPENAI_BASE_URL (else
        vLLM's default address), FORAGER_MODEL (else the first model the server lists) and
        FORAGER_API_KEY / OPENAI_API_KEY. `timeout` bounds each request (seconds); connection errors,
        timeouts, 429 and 5xx are retried `max_retries` times with exponential backoff and jitter.
        `request_token_ids=False` sends no logprob/token-id fields (for servers that reject them).

        `api="completions"`: token-in-token-out through `/v1/completions` (vLLM). `tokenizer` is the served
        model's (a directory, hub id, known name or a `ChatTokens`; default: `model`); `max_context` bounds
        prompt + reply (default: the `max_model_len` the server lists), so each request asks for what fits."""
        if api not in ("chat", "completions"):
            raise PolicyError(f"api must be chat or completions, not {api!r}")
        self.base_url = _normalize_base_url(base_url or _env("FORAGER_BASE_URL", "OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        self.model = model or _env("FORAGER_MODEL")
        api_key = api_key or _env("FORAGER_API_KEY", "OPENAI_API_KEY")
        self.sampling: dict[str, Any] = {
            "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "stop": stop, "seed": seed,
            "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty}
        self.extra_body = dict(extra_body or {})
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.request_token_ids = request_token_ids
        self.top_logprobs = top_logprobs
        self.policy_version = policy_version
        """Which weights the server holds; the trainer bumps it after each weight update."""
        self.api = api
        self.url = f"{self.base_url}/chat/completions" if api == "chat" else f"{self.base_url}/completions"
        self.max_context = max_context
        self._tokenizer_source = tokenizer
        self._chat_tokens: Any = tokenizer if hasattr(tokenizer, "prompt_ids") else None
        self._client = httpx.Client(
            verify=_ssl_context(),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self._model_lock = threading.Lock()
        self._closed = False

    # -- the Policy seam ---------------------------------------------------------------------------
    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        """The next assistant message. The chat API takes messages, not tokens: `prefix_token_ids` is
        not sent (the agent compares it with the returned `prompt_token_ids`), and `task` is unused."""
        if self._closed:
            raise PolicyError("this OpenAIPolicy is closed: make a new one")
        if self.api == "completions":
            return self._complete(messages, prefix_token_ids, max_tokens, tools)
        body = self._request_body(messages, max_tokens, tools)
        version = self.policy_version  # the weights that sample this request, as the request leaves
        started = time.monotonic()
        data = self._post(body)
        return self._parse(data, version, time.monotonic() - started)

    def describe(self) -> dict[str, Any]:
        """What produced the actions, for `Trajectory.policy`."""
        sampling = {k: v for k, v in self.sampling.items() if v is not None}
        return {"name": self.name, "model": self.model, "base_url": self.base_url, "api": self.api, **sampling}

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._closed = True
        self._client.close()

    def __enter__(self) -> OpenAIPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIPolicy(base_url={self.base_url!r}, model={self.model!r})"

    # -- token-in, token-out -----------------------------------------------------------------------
    def _complete(self, messages: list[Message], prefix_token_ids: list[int] | None, max_tokens: int | None,
                  tools: list[dict[str, Any]] | None) -> PolicyOutput:
        """One turn through `/v1/completions`: the prompt ids go out, the sampled ids and logprobs come back."""
        chat = self.chat_tokens()
        prompt = chat.prompt_ids(messages, prefix_token_ids=prefix_token_ids, tools=tools)
        limit = self._context_limit()
        room = None if limit is None else limit - len(prompt)
        if room is not None and room <= 0:
            raise ContextLengthExceeded(f"the prompt has {len(prompt)} tokens and the context window {limit}: "
                                        "no room to reply")
        budget = max_tokens or self.sampling["max_tokens"] or room
        if budget is None:
            raise PolicyError("token-in-token-out needs a reply budget: pass max_tokens= or max_context=, or serve "
                              "a model whose /v1/models lists max_model_len (vLLM does)")
        body: dict[str, Any] = {"model": self._resolve_model(), "prompt": prompt,
                                "max_tokens": min(budget, room) if room is not None else budget}
        body.update((k, v) for k, v in self.sampling.items() if v is not None and k != "max_tokens")
        if self.request_token_ids:
            body.update(logprobs=max(1, self.top_logprobs), return_token_ids=True, return_tokens_as_token_ids=True)
        body.update(self.extra_body)
        version = self.policy_version
        started = time.monotonic()
        data = self._post(body)
        return self._parse_completion(data, prompt, version, time.monotonic() - started)

    def chat_tokens(self) -> Any:
        """The served model's tokenizer with its chat template (`ChatTokens`), loaded on first use."""
        if self._chat_tokens is None:
            with self._model_lock:
                if self._chat_tokens is None:
                    from forager.policies.chat_tokens import ChatTokens
                    from forager.policies.models import resolve_model

                    source = self._tokenizer_source or self._resolve_model()
                    self._chat_tokens = ChatTokens.load(resolve_model(str(source)))
        return self._chat_tokens

    def _context_limit(self) -> int | None:
        """`max_context`, else the `max_model_len` the server lists for the model (asked once)."""
        if self.max_context is None:
            try:
                listed = self._client.get(f"{self.base_url}/models").json()["data"]
                entry = next((m for m in listed if m.get("id") == self._resolve_model()), listed[0])
                self.max_context = int(entry["max_model_len"]) if entry.get("max_model_len") else 0
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
                self.max_context = 0  # unknown: the server rejects what does not fit, with its 400
        return self.max_context or None

    def _parse_completion(self, data: dict[str, Any], prompt: list[int], version: int,
                          latency_s: float) -> PolicyOutput:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as err:
            raise PolicyError(f"{self.url} answered without a choice: {str(data)[:500]}") from err
        logprobs_block = choice.get("logprobs") or {}
        logprobs = logprobs_block.get("token_logprobs")
        spelled = _spelled_token_ids([{"token": t} for t in logprobs_block.get("tokens") or []])
        token_ids = choice.get("token_ids") if choice.get("token_ids") is not None else spelled
        if token_ids is not None and logprobs is not None and len(token_ids) != len(logprobs):
            log.warning("%s: %d token ids but %d logprobs; dropping the logprobs (text-only output)",
                        self.url, len(token_ids), len(logprobs))
            logprobs = None
        echoed = data.get("prompt_token_ids") or choice.get("prompt_token_ids")
        if echoed is not None and list(echoed) != prompt:
            raise PolicyError(f"{self.url} sampled from other prompt tokens than were sent ({len(echoed)} vs "
                              f"{len(prompt)}): the server re-tokenized the prompt; serve a vLLM that takes token ids")
        usage = data.get("usage") or {}
        return PolicyOutput(
            text=choice.get("text") or "",
            token_ids=token_ids,
            logprobs=[float(x) for x in logprobs] if logprobs is not None else None,
            prompt_token_ids=prompt,
            finish_reason=choice.get("finish_reason") or "stop",
            policy_version=version,
            prompt_tokens=usage.get("prompt_tokens", len(prompt)),
            completion_tokens=usage.get("completion_tokens"),
            latency_s=latency_s,
        )

    # -- the request -------------------------------------------------------------------------------
    def _resolve_model(self) -> str:
        if self.model is not None:
            return self.model
        with self._model_lock:  # one lookup, however many workers start at once
            if self.model is None:
                try:
                    response = self._client.get(f"{self.base_url}/models")
                    response.raise_for_status()
                    self.model = response.json()["data"][0]["id"]
                except httpx.HTTPError as err:
                    status = getattr(getattr(err, "response", None), "status_code", 0) if isinstance(
                        err, httpx.HTTPStatusError) else 0
                    if not isinstance(err, httpx.TransportError) and status < 500:
                        raise PolicyError(f"no model named and {self.base_url}/models did not list one ({err}): "
                                          "pass model= or set FORAGER_MODEL") from err
                    raise PolicyUnavailable(f"no model named and {self.base_url}/models did not answer ({err}): "
                                            "check that the server is up, or pass model= / set FORAGER_MODEL") from err
                except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
                    raise PolicyError(f"no model named and {self.base_url}/models did not list one ({err}): "
                                      "pass model= or set FORAGER_MODEL") from err
            return self.model

    def _request_body(self, messages: list[Message], max_tokens: int | None,
                      tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._resolve_model(), "messages": messages}
        body.update((k, v) for k, v in self.sampling.items() if v is not None)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if tools:
            body["tools"] = tools
        if self.request_token_ids:
            body.update(logprobs=True, top_logprobs=self.top_logprobs, return_token_ids=True,
                        return_tokens_as_token_ids=True)
        body.update(self.extra_body)
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        failures: list[str] = []
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                failures.append(f"no answer within the {self.timeout:g}s timeout")
            except httpx.TransportError as err:
                failures.append(f"cannot reach the server ({type(err).__name__}: {err})")
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as err:
                        raise PolicyError(f"{self.url} answered 200 with a body that is not JSON: "
                                          f"{response.text[:500]!r}") from err
                message, code = _error_message(response)
                if response.status_code == 429 or response.status_code >= 500:
                    failures.append(f"HTTP {response.status_code}: {message[:300]}")
                    retry_after = _retry_after(response)
                elif self._is_context_error(response.status_code, message, code):
                    raise ContextLengthExceeded(f"{self.url}: the conversation does not fit the model's context "
                                                f"(HTTP {response.status_code}): {message}")
                elif self._drop_token_fields(body, response.status_code, message):
                    continue  # retried at once without them; not a failure of the server
                else:
                    hint = _HINTS.get(response.status_code, "fix the request or the server's configuration")
                    raise PolicyError(f"{self.url} rejected the request (HTTP {response.status_code}): {message}; "
                                      + hint.format(models=f"{self.base_url}/models"))
            if attempt >= self.max_retries:
                raise PolicyUnavailable(f"{self.url} failed {attempt + 1} times (timeout {self.timeout:g}s per request); "
                                  f"last: {failures[-1]}. Check that the server is up and serving {body['model']!r}, "
                                  "or raise timeout= / max_retries=")
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
            delay = random.uniform(delay / 2, delay)  # jitter: many workers must not retry in lockstep
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_backoff_s))
            log.warning("%s: %s; retry %d/%d in %.1fs", self.url, failures[-1], attempt + 1, self.max_retries, delay)
            time.sleep(delay)
            attempt += 1

    @staticmethod
    def _is_context_error(status: int, message: str, code: str | None) -> bool:
        return code == "context_length_exceeded" or (status in (400, 413, 422) and bool(_CONTEXT_PATTERNS.search(message)))

    def _drop_token_fields(self, body: dict[str, Any], status: int, message: str) -> bool:
        """A server that refuses the token-id fields: drop them from now on (text-only outputs)."""
        sent = [name for name in TOKEN_FIELDS if name in body and name not in self.extra_body]
        if status not in (400, 422) or not sent or not any(name in message for name in sent):
            return False
        log.warning("%s refuses %s (%s); asking without them from now on: outputs will be text-only "
                    "(pass request_token_ids=False to skip this probe)", self.url, ", ".join(sent), message[:200])
        self.request_token_ids = False
        for name in sent:
            del body[name]
        return True

    # -- the response ------------------------------------------------------------------------------
    def _parse(self, data: dict[str, Any], version: int, latency_s: float) -> PolicyOutput:
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError) as err:
            raise PolicyError(f"{self.url} answered without a choice: {str(data)[:500]}") from err
        token_ids = choice.get("token_ids")
        entries = (choice.get("logprobs") or {}).get("content") or None
        logprobs = [float(entry["logprob"]) for entry in entries] if entries else None
        spelled = _spelled_token_ids(entries)
        if token_ids is None:
            token_ids = spelled
        elif spelled is not None and spelled != token_ids:
            log.warning("%s: the logprobs' token ids disagree with `token_ids`; keeping `token_ids`", self.url)
        if token_ids is not None and logprobs is not None and len(token_ids) != len(logprobs):
            log.warning("%s: %d token ids but %d logprobs; dropping the logprobs (text-only output)",
                        self.url, len(token_ids), len(logprobs))
            logprobs = None
        usage = data.get("usage") or {}
        return PolicyOutput(
            text=message.get("content") or "",
            token_ids=token_ids,
            logprobs=logprobs,
            prompt_token_ids=data.get("prompt_token_ids"),
            finish_reason=choice.get("finish_reason") or "stop",
            policy_version=version,
            tool_calls=_tool_calls(message.get("tool_calls")),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_s=latency_s,
        )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _spelled_token_ids(entries: list[dict[str, Any]] | None) -> list[int] | None:
    """The ids of logprob entries spelled `token_id:N` (vLLM's `return_tokens_as_token_ids`), else None."""
    if not entries:
        return None
    ids = []
    for entry in entries:
        token = entry.get("token") or ""
        if not token.startswith("token_id:"):
            return None
        try:
            ids.append(int(token.removeprefix("token_id:")))
        except ValueError:
            return None
    return ids


def _tool_calls(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI function calls with `arguments` as the JSON string the API specifies."""
    if not calls:
        return None
    normalized = []
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments", "")
        normalized.append({"id": call.get("id") or "", "type": call.get("type") or "function", "function": {
            "name": function.get("name", ""),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return normalized
