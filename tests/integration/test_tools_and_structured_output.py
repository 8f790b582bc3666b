"""Tool calling, tool choice and structured output through `dynamo serve`, spoken to by the
official `openai` client. The `echo` engine makes the model "say" exactly the text under test."""

from __future__ import annotations

import json

import openai
import pytest

pytestmark = pytest.mark.timeout(180)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture
def echo_tools(cluster, mistral_tokenizer_dir):
    _, base = cluster.serve("--engine", "echo", "--model", str(mistral_tokenizer_dir),
                            "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3", workers=1)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    return client, mistral_tokenizer_dir.name


def _says(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


SAID = ('<think>Two lookups.</think>Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')


def test_auto_tool_calls_with_reasoning_streaming_and_not(echo_tools):
    client, model = echo_tools
    reply = client.chat.completions.create(model=model, messages=_says(SAID), tools=[WEATHER, TIME])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert choice.message.model_extra["reasoning_content"] == "Two lookups."
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls)

    chunks = list(client.chat.completions.create(model=model, messages=_says(SAID), tools=[WEATHER, TIME], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed: dict[int, dict] = {}
    for d in deltas:
        for tc in d.tool_calls or []:
            call = streamed.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
            call["arguments"] += tc.function.arguments or ""
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed.values()] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c["id"].startswith("call_") for c in streamed.values())
    assert "".join(d.content or "" for d in deltas) == "Checking."
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "Two lookups."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_parallel_tool_calls_false_keeps_the_first_call(echo_tools):
    client, model = echo_tools
    reply = client.chat.completions.create(model=model, messages=_says(SAID), tools=[WEATHER, TIME],
                                           parallel_tool_calls=False)
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["get_weather"]


def test_text_without_calls_and_tool_choice_none_stay_content(echo_tools):
    client, model = echo_tools
    plain = client.chat.completions.create(model=model, messages=_says("Just text."), tools=[WEATHER])
    assert plain.choices[0].message.content == "Just text." and plain.choices[0].message.tool_calls is None
    assert plain.choices[0].finish_reason == "stop"
    said = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    none = client.chat.completions.create(model=model, messages=_says(said), tools=[WEATHER], tool_choice="none")
    assert none.choices[0].message.content == said and none.choices[0].message.tool_calls is None


BAD = [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes", "tools": [WEATHER]}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_choice": []}, "guided_choice"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
    # echo cannot constrain its output: a constraint it would ignore is refused, not dropped
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"guided_choice": ["a", "b"]}, "guided_choice"),
    # ... and so is a forced tool call, which it could not enforce (plain text would come back)
    ({"tool_choice": "required", "tools": [WEATHER]}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "tools": [WEATHER]}, "tool_choice"),
]


def test_bad_tool_and_format_parameters_are_400s_naming_the_param(echo_tools):
    client, model = echo_tools
    for extra, param in BAD:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=model, messages=_says("x"), extra_body=extra)
        error = caught.value.body
        assert (caught.value.status_code, error["param"]) == (400, param), (extra, error)
        assert error["message"]
    with pytest.raises(openai.BadRequestError) as caught:  # completions take the same constraints
        client.completions.create(model=model, prompt="x", extra_body={"guided_regex": "a+"})
    assert caught.value.body["param"] == "guided_regex"
    assert client.chat.completions.create(model=model, messages=_says("still serving")).choices[0].message.content
