"""OpenAIPolicy against a real HTTP server that answers as vLLM does (forager.testing.openai_server)."""

from __future__ import annotations

import threading
import time

import pytest

from forager.core import ContextLengthExceeded, Policy, PolicyError
from forager.policies.openai import OpenAIPolicy
from forager.testing import (
    IM_END,
    OpenAIServer,
    Reply,
    by_conversation,
    decode,
    encode,
    episode,
    fail_first,
    render_chat,
    replies,
    toy_logprob,
)

MESSAGES = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "Fix the bug in héllo.py"}]
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout": 5.0}
BASH = {"type": "function", "function": {"name": "bash", "description": "Run a command",
                                          "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}


def policy_for(server: OpenAIServer, **options) -> OpenAIPolicy:
    return OpenAIPolicy(server.base_url, model=server.model, **{**FAST, **options})


def test_token_ids_logprobs_and_prompt_ids_are_exact():
    with OpenAIServer("Let me look at the code.") as server, policy_for(server) as policy:
        assert isinstance(policy, Policy)
        out = policy.act(MESSAGES)
        assert out.text == "Let me look at the code."
        assert out.token_ids == [*encode("Let me look at the code."), IM_END]
        assert decode(out.token_ids) == "Let me look at the code.<|im_end|>"
        assert out.logprobs == [toy_logprob(t, i) for i, t in enumerate(out.token_ids)]
        assert all(lp < 0 for lp in out.logprobs)
        assert out.prompt_token_ids == render_chat(MESSAGES)
        assert decode(out.prompt_token_ids).endswith("héllo.py<|im_end|>\n<|im_start|>assistant\n")
        assert out.trainable and out.finish_reason == "stop"
        assert (out.prompt_tokens, out.completion_tokens) == (len(out.prompt_token_ids), len(out.token_ids))
        assert out.latency_s > 0
        request = server.chat_requests[0]
        assert request["logprobs"] is True and request["return_token_ids"] is True
        assert request["return_tokens_as_token_ids"] is True and request["model"] == "toy-model"


def test_ids_from_token_id_spelled_logprobs_on_older_vllm():
    # vLLM < 0.10.2 ignores return_token_ids; the ids come from "token_id:N" logprob tokens.
    with OpenAIServer("old server", supports_return_token_ids=False) as server, policy_for(server) as policy:
        out = policy.act(MESSAGES)
        assert out.token_ids == [*encode("old server"), IM_END] and out.trainable
        assert out.prompt_token_ids is None


def test_multi_turn_prompts_extend_the_sampled_tokens():
    with OpenAIServer(episode(["first", "second"])) as server, policy_for(server) as policy:
        first = policy.act(MESSAGES)
        conversation = [*MESSAGES, {"role": "assistant", "content": first.text}, {"role": "user", "content": "ok"}]
        second = policy.act(conversation)
        prefix = first.prompt_token_ids + first.token_ids
        assert second.prompt_token_ids[:len(prefix)] == prefix
        assert second.text == "second"


def test_text_only_server_gives_a_non_trainable_output():
    with OpenAIServer(Reply("plain text", token_ids=False)) as server, policy_for(server) as policy:
        out = policy.act(MESSAGES)
        assert out.text == "plain text"
        assert (out.token_ids, out.logprobs, out.prompt_token_ids) == (None, None, None)
        assert not out.trainable


def test_server_that_refuses_the_token_fields_is_asked_again_without_them():
    with OpenAIServer("fine", reject_unknown_fields=True) as server, policy_for(server) as policy:
        assert policy.act(MESSAGES).text == "fine"
        assert len(server.chat_requests) == 2
        assert "return_token_ids" not in server.chat_requests[1] and "logprobs" not in server.chat_requests[1]
        assert not policy.request_token_ids
        policy.act(MESSAGES)  # remembered: one request only
        assert len(server.chat_requests) == 3


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried(status):
    with OpenAIServer(fail_first(2, status=status, then="recovered")) as server, policy_for(server) as policy:
        assert policy.act(MESSAGES).text == "recovered"
        assert len(server.chat_requests) == 3


def test_retries_run_out_with_a_clear_error():
    with OpenAIServer(fail_first(10, status=502)) as server, policy_for(server, max_retries=2) as policy:
        with pytest.raises(PolicyError, match="failed 3 times.*HTTP 502"):
            policy.act(MESSAGES)
        assert len(server.chat_requests) == 3


def test_a_server_slower_than_the_timeout_is_retried_then_fails():
    with OpenAIServer(Reply("late", delay_s=2.0)) as server, policy_for(server, timeout=0.2, max_retries=1) as policy:
        started = time.monotonic()
        with pytest.raises(PolicyError) as raised:
            policy.act(MESSAGES)
        assert time.monotonic() - started < 1.5
        assert policy.url in str(raised.value) and "0.2s" in str(raised.value)
        assert len(server.chat_requests) == 2


def test_a_slow_first_answer_then_a_fast_one_succeeds():
    script = replies(Reply("late", delay_s=2.0), "on time")
    with OpenAIServer(script) as server, policy_for(server, timeout=0.3) as policy:
        assert policy.act(MESSAGES).text == "on time"


def test_unreachable_server_is_retried_then_fails():
    server = OpenAIServer()
    url = server.base_url
    server.close()  # the port is free again: connections are refused
    with OpenAIPolicy(url, model="m", max_retries=1, **FAST) as policy:
        with pytest.raises(PolicyError, match="failed 2 times.*cannot reach"):
            policy.act(MESSAGES)


def test_wrong_api_key_fails_at_once():
    with OpenAIServer("hi", api_key="secret") as server:
        with policy_for(server, api_key="wrong") as policy:
            with pytest.raises(PolicyError, match="HTTP 401.*API key"):
                policy.act(MESSAGES)
            assert len(server.requests) == 1
        with policy_for(server, api_key="secret") as policy:
            assert policy.act(MESSAGES).text == "hi"


def test_unknown_model_and_wrong_path_fail_at_once():
    with OpenAIServer("hi") as server:
        with OpenAIPolicy(server.base_url, model="gpt-nope", **FAST) as policy:
            with pytest.raises(PolicyError, match="HTTP 404.*gpt-nope.*does not exist.*base_url"):
                policy.act(MESSAGES)
        with OpenAIPolicy(server.base_url.replace("/v1", "/v2"), model=server.model, **FAST) as policy:
            with pytest.raises(PolicyError, match="HTTP 404"):
                policy.act(MESSAGES)
        assert len(server.requests) == 2


def test_a_responder_that_raises_answers_500():
    def broken(request):
        raise KeyError("oops")

    with OpenAIServer(broken) as server, policy_for(server, max_retries=1) as policy:
        with pytest.raises(PolicyError, match="HTTP 500: the responder failed: KeyError"):
            policy.act(MESSAGES)
        assert len(server.chat_requests) == 2


def test_a_bad_request_is_not_retried():
    with OpenAIServer(fail_first(5, status=400, message="temperature must be >= 0")) as server:
        with policy_for(server) as policy, pytest.raises(PolicyError, match="temperature must be >= 0"):
            policy.act(MESSAGES)
        assert len(server.chat_requests) == 1


def test_too_long_prompt_raises_context_length_exceeded():
    with OpenAIServer("never", max_model_len=64) as server, policy_for(server) as policy:
        with pytest.raises(ContextLengthExceeded, match="maximum context length is 64 tokens"):
            policy.act([{"role": "user", "content": "x" * 100}])
        with pytest.raises(ContextLengthExceeded, match="'max_tokens' or 'max_completion_tokens' is too large"):
            policy.act([{"role": "user", "content": "short"}], max_tokens=60)
        assert len(server.chat_requests) == 2
        # vLLM fills the rest of the context when max_tokens is not given
        out = policy.act([{"role": "user", "content": "short"}])
        assert out.text == "never"


def test_openai_context_length_code_raises_context_length_exceeded():
    body = {"error": {"message": "Your input exceeds the context window of this model.",
                      "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    with OpenAIServer(Reply(status=400, body=body)) as server, policy_for(server) as policy:
        with pytest.raises(ContextLengthExceeded):
            policy.act(MESSAGES)


def test_function_calling_returns_tool_calls():
    reply = Reply(tool_calls=[{"name": "bash", "arguments": {"command": "ls -la"}}])
    with OpenAIServer(reply) as server, policy_for(server) as policy:
        out = policy.act(MESSAGES, tools=[BASH])
        assert out.finish_reason == "tool_calls" and out.text == ""
        (call,) = out.tool_calls
        assert call["type"] == "function" and call["id"]
        assert call["function"] == {"name": "bash", "arguments": '{"command": "ls -la"}'}
        assert server.chat_requests[0]["tools"] == [BASH]
        assert out.prompt_token_ids == render_chat(MESSAGES, tools=[BASH])
        assert decode(out.token_ids).startswith("<tool_call>\n")
        # The call sent back renders to the tokens that were sampled.
        turn = {"role": "assistant", "content": out.text, "tool_calls": out.tool_calls}
        rendered = render_chat([*MESSAGES, turn], tools=[BASH], add_generation_prompt=False)
        assert rendered[:len(out.prompt_token_ids) + len(out.token_ids)] == out.prompt_token_ids + out.token_ids


def test_max_tokens_cuts_the_reply():
    with OpenAIServer("a long answer that goes on") as server, policy_for(server, max_tokens=100) as policy:
        out = policy.act(MESSAGES, max_tokens=6)
        assert (out.text, out.finish_reason) == ("a long", "length")
        assert out.token_ids == encode("a long") and len(out.logprobs) == 6
        assert server.chat_requests[0]["max_tokens"] == 6
        assert policy.act(MESSAGES).finish_reason == "stop"
        assert server.chat_requests[1]["max_tokens"] == 100


def test_stop_string_ends_the_text_but_not_the_tokens():
    # As vLLM: the stop string is sampled (its tokens are in token_ids) but cut from the text.
    with OpenAIServer("run it</tool> and more") as server, policy_for(server, stop=["</tool>"]) as policy:
        out = policy.act(MESSAGES)
        assert out.text == "run it" and out.finish_reason == "stop"
        assert out.token_ids == encode("run it</tool>")


def test_sampling_parameters_and_extra_body_are_sent():
    options = {"temperature": 0.7, "top_p": 0.9, "seed": 3, "presence_penalty": 0.1, "frequency_penalty": 0.2,
               "extra_body": {"top_k": 20, "repetition_penalty": 1.05}}
    with OpenAIServer("ok") as server, policy_for(server, **options) as policy:
        policy.policy_version = 7
        assert policy.act(MESSAGES).policy_version == 7
        request = server.chat_requests[0]
        assert {k: request[k] for k in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
                                        "top_k", "repetition_penalty")} == {
            "temperature": 0.7, "top_p": 0.9, "seed": 3, "presence_penalty": 0.1, "frequency_penalty": 0.2,
            "top_k": 20, "repetition_penalty": 1.05}
        assert "stop" not in request and "max_tokens" not in request


def test_request_token_ids_off_sends_no_token_fields():
    with OpenAIServer("ok") as server, policy_for(server, request_token_ids=False) as policy:
        assert not policy.act(MESSAGES).trainable
        assert not {"logprobs", "return_token_ids"} & server.chat_requests[0].keys()


def test_configuration_from_the_environment(monkeypatch):
    with OpenAIServer("from env", api_key="k1") as server:
        monkeypatch.setenv("FORAGER_BASE_URL", server.base_url.removesuffix("/v1"))  # /v1 is added
        monkeypatch.setenv("FORAGER_MODEL", server.model)
        monkeypatch.setenv("FORAGER_API_KEY", "k1")
        with OpenAIPolicy(**FAST) as policy:
            assert policy.base_url == server.base_url and policy.model == server.model
            assert policy.act(MESSAGES).text == "from env"
        for name in ("FORAGER_BASE_URL", "FORAGER_MODEL", "FORAGER_API_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "/")
        monkeypatch.setenv("OPENAI_API_KEY", "k1")
        with OpenAIPolicy(**FAST) as policy:  # no model anywhere: the first one the server lists
            assert policy.act(MESSAGES).text == "from env"
            assert policy.model == server.model
        assert server.requests[-2].path == "/v1/models"
        assert server.requests[-1].headers["authorization"] == "Bearer k1"


def test_concurrent_use_from_eight_threads():
    def echo(messages):
        return Reply("echo: " + messages[-1]["content"], delay_s=0.02)

    outputs: dict[tuple[int, int], str] = {}
    errors: list[BaseException] = []
    with OpenAIServer(by_conversation(echo)) as server, policy_for(server) as policy:
        def worker(w: int) -> None:
            try:
                for i in range(5):
                    out = policy.act([{"role": "user", "content": f"w{w} i{i}"}])
                    assert out.trainable and out.token_ids[:-1] == encode(out.text)
                    outputs[w, i] = out.text
            except BaseException as err:  # noqa: BLE001 (re-raised below, in the test's thread)
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert outputs == {(w, i): f"echo: w{w} i{i}" for w in range(8) for i in range(5)}
        assert len(server.chat_requests) == 40
        assert time.monotonic() - started < 40 * 0.02  # the requests overlapped


def test_closed_policy_refuses_to_act():
    with OpenAIServer("ok") as server:
        policy = policy_for(server)
        policy.close()
        policy.close()
        with pytest.raises(PolicyError, match="closed"):
            policy.act(MESSAGES)
