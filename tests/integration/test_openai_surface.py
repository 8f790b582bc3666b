"""What OpenAI's schema and real clients expect of the chat and completions bodies, against
one `dynamo serve` (mocker, a prompt pool for bodies over 256 characters), spoken to over
real HTTP and by the official `openai` client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import DynamoCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def served(tmp_path_factory, mistral_tokenizer_dir):
    cluster = DynamoCluster(Path(tmp_path_factory.mktemp("surface")))
    try:
        _, base = cluster.serve(
            "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "100",
            "--preprocess-workers", "1", "--preprocess-min-chars", "256", workers=1,
        )
        yield base
    finally:
        cluster.stop()


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def post(base: str, path: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


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
