"""What OpenAI's schema and real clients expect of the chat and completions bodies, against
one `dynamo serve` (mocker, a prompt pool for bodies over 256 characters), spoken to over
real HTTP and by the official `openai` client."""

from __future__ import annotations

import json

import httpx
import pytest

from openai_servers import client as _client
from openai_servers import echo_served, post, served  # noqa: F401 - the module's servers

pytestmark = pytest.mark.timeout(180)


def _chat(content: str = "hi", **extra) -> dict:
    return {"model": "test-model", "messages": [{"role": "user", "content": content}], "max_tokens": 3, **extra}


def test_integers_past_64_bits_are_served_in_long_and_short_bodies(served):
    huge = 2**70
    for content in ("short", "long " * 200):  # the long body goes through the prompt pool
        status, body = post(served, "/v1/chat/completions", _chat(content, chat_template_kwargs={"n": huge}))
        assert status == 200, body
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "maximum": huge}}}
        status, body = post(served, "/v1/chat/completions", _chat(content, tools=[tool]))
        assert status == 200, body


def test_chat_message_has_refusal_null_and_no_null_tool_calls(served):
    status, body = post(served, "/v1/chat/completions", _chat())
    message = body["choices"][0]["message"]
    assert status == 200 and message["refusal"] is None and "tool_calls" not in message, message


def test_unknown_role_and_empty_body_are_400s_saying_what_is_wrong(served):
    status, body = post(served, "/v1/chat/completions", {"model": "test-model", "messages": [{"role": "wizard", "content": "x"}]})
    assert status == 400 and body["error"]["param"] == "messages[0].role", body
    assert "wizard" in body["error"]["message"]
    for path in ("/v1/chat/completions", "/v1/completions", "/tokenize"):
        status, body = post(served, path, b"")
        assert status == 400 and "empty" in body["error"]["message"], body
        assert "truncated" not in body["error"]["message"]


def test_mocker_top_logprobs_include_the_sampled_token(served):
    reply = _client(served).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "a"}], max_tokens=4, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True})
    for entry in reply.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 3
        assert (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob) == (entry.token, entry.logprob)
        assert sorted((t.logprob for t in entry.top_logprobs), reverse=True) == [t.logprob for t in entry.top_logprobs]


def _check_prompt_then_output_logprobs(logprobs, text: str, prompt_tokens: int, max_tokens: int) -> None:
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == prompt_tokens + max_tokens
    # The prompt's first token has nothing to be predicted from: null, as OpenAI and vLLM send it.
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp < 0 for lp in logprobs.token_logprobs[1:])
    assert all(len(top) >= 1 for top in logprobs.top_logprobs[1:])
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[-1] < len(text)


def test_echo_with_logprobs_returns_the_prompts_logprobs_streaming_and_not(served):
    client = _client(served)
    prompt = "The capital of France is Paris"
    reply = client.completions.create(model="test-model", prompt=prompt, max_tokens=2, echo=True, logprobs=2,
                                      extra_body={"ignore_eos": True})
    choice, prompt_tokens = reply.choices[0], reply.usage.prompt_tokens
    assert choice.text.startswith(prompt) and prompt_tokens > 3
    _check_prompt_then_output_logprobs(choice.logprobs, choice.text, prompt_tokens, 2)
    # lm-evaluation-harness's loglikelihood sums the continuation's tokens: they are the prompt's.
    # (the first is the BOS token the tokenizer adds, shown as vLLM shows it)
    assert choice.logprobs.tokens[0] == "<s>" and "".join(choice.logprobs.tokens[1:prompt_tokens]).strip() == prompt

    chunks = list(client.completions.create(model="test-model", prompt=prompt, max_tokens=2, echo=True, logprobs=2,
                                            stream=True, extra_body={"ignore_eos": True}))
    first = chunks[0].choices[0]
    assert first.text == prompt and len(first.logprobs.tokens) == prompt_tokens
    assert first.logprobs.token_logprobs == choice.logprobs.token_logprobs[:prompt_tokens]
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed[:prompt_tokens] == choice.logprobs.tokens[:prompt_tokens] and len(streamed) == prompt_tokens + 2


def test_echo_with_logprobs_is_a_400_where_the_engine_has_no_prompt_logprobs(echo_served):
    status, body = post(echo_served, "/v1/completions", {"model": "echo", "prompt": "x", "echo": True, "logprobs": 1})
    assert status == 400 and body["error"]["param"] == "echo" and "prompt's logprobs" in body["error"]["message"], body
    status, body = post(echo_served, "/v1/completions", {"model": "echo", "prompt": "x", "echo": True})
    assert status == 200 and body["choices"][0]["text"].startswith("x"), body


def test_completion_stream_chunks_leave_usage_out_but_the_usage_chunk_has_it(served):
    body = {"model": "test-model", "prompt": "hi", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{served}/v1/completions", json=body, timeout=30) as response:
        chunks = [line[6:] for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    decoded = [json.loads(c) for c in chunks]
    assert all("usage" not in c for c in decoded[:-1]), decoded  # OpenAI's schema has no null usage
    assert decoded[-1]["usage"]["completion_tokens"] == 3 and decoded[-1]["choices"] == []


def test_whole_number_floats_are_integers_as_json_schema_says(served):
    status, body = post(served, "/v1/chat/completions", _chat(max_tokens=2.0, n=1.0, top_logprobs=1.0, logprobs=True))
    assert status == 200 and body["usage"]["completion_tokens"] == 2, body
    status, body = post(served, "/v1/chat/completions", _chat(max_tokens=2.5))
    assert status == 400 and body["error"]["param"] == "max_tokens", body
