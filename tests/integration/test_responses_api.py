"""`POST /v1/responses` through the official `openai` client: string and message-list input,
instructions, tools -> function_call items, reasoning items, the streamed event sequence,
usage, and the stateless refusals. The `echo` engine "says" the text under test; the mocker
runs out of `max_output_tokens`."""

from __future__ import annotations

import json

import openai
import pytest

from openai_servers import client as _client
from openai_servers import echo_served, post, served  # noqa: F401 - the module's servers

pytestmark = pytest.mark.timeout(180)

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SAID = ('<think>Look it up.</think>Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        '</tool_call>')


def test_string_and_message_list_input_with_instructions_and_usage(echo_served):  # noqa: F811
    client = _client(echo_served)
    reply = client.responses.create(model="echo", input="Hello there")
    assert reply.object == "response" and reply.status == "completed" and reply.id.startswith("resp_")
    assert reply.output_text == "Hello there" and [item.type for item in reply.output] == ["message"]
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens

    listed = client.responses.create(
        model="echo", instructions="Answer briefly.", temperature=0.5, top_p=0.9, max_output_tokens=64,
        input=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
               {"role": "user", "content": [{"type": "input_text", "text": "second"}]}])
    assert listed.output_text == "second" and listed.instructions == "Answer briefly."
    assert listed.usage.input_tokens > reply.usage.input_tokens  # the instructions and turns were templated


def test_tools_give_reasoning_message_and_function_call_items(echo_served):  # noqa: F811
    client = _client(echo_served)
    reply = client.responses.create(model="echo", input=SAID, tools=[WEATHER])
    assert [item.type for item in reply.output] == ["reasoning", "message", "function_call"]
    reasoning, message, call = reply.output
    assert reasoning.content[0].text == "Look it up."
    assert message.content[0].text == "Checking."
    assert (call.name, json.loads(call.arguments), call.status) == ("get_weather", {"city": "Paris"}, "completed")
    assert call.call_id.startswith("call_")

    # The call's result goes back as a function_call_output item, with the call before it.
    follow = client.responses.create(model="echo", tools=[WEATHER], input=[
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        {"role": "user", "content": "thanks"},
    ])
    assert follow.output_text == "thanks"


def test_streaming_follows_the_documented_event_sequence(echo_served):  # noqa: F811
    client = _client(echo_served)
    events = list(client.responses.create(model="echo", input=SAID, tools=[WEATHER], stream=True))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    per_item = [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
    ]
    deduplicated = [t for i, t in enumerate(types[2:-1]) if i == 0 or t != types[2:-1][i - 1] or not t.endswith(".delta")]
    assert deduplicated == per_item, types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Checking." == next(e.text for e in events if e.type == "response.output_text.done")
    done = events[-1].response
    assert done.status == "completed" and [item.type for item in done.output] == ["reasoning", "message", "function_call"]
    assert json.loads(done.output[2].arguments) == {"city": "Paris"} and done.usage.output_tokens > 0
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1, 2]


def test_max_output_tokens_ends_incomplete_streaming_and_not(served):  # noqa: F811
    client = _client(served)
    reply = client.responses.create(model="test-model", input="tell me", max_output_tokens=5,
                                    extra_body={"seed": 1})
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.output_tokens == 5 and reply.output_text
    events = list(client.responses.create(model="test-model", input="tell me", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.usage.output_tokens == 5


def test_stored_state_and_unsupported_inputs_are_400s_naming_the_param(echo_served):  # noqa: F811
    for extra, param in [({"store": True}, "store"), ({"previous_response_id": "resp_1"}, "previous_response_id"),
                         ({"tools": [{"type": "web_search"}]}, "tools"),
                         ({"input": [{"type": "image_generation_call"}]}, "input"),
                         ({"input": [{"role": "wizard", "content": "x"}]}, "input"),
                         ({"max_output_tokens": 0}, "max_output_tokens"),
                         ({"tool_choice": "required", "tools": [WEATHER]}, "tool_choice")]:
        status, body = post(echo_served, "/v1/responses", {"model": "echo", "input": "x", **extra})
        assert status == 400 and body["error"]["param"] == param, (extra, body)
    with pytest.raises(openai.NotFoundError):
        _client(echo_served).responses.create(model="nope", input="x")
    assert _client(echo_served).responses.create(model="echo", input="x", store=False).output_text == "x"
