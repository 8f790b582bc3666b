"""`tool_choice`: forced calls need an engine that constrains its output; where one does, the
gateway reads the constrained JSON back as calls (structured.py, chat_output.py)."""

from __future__ import annotations

import json

import pytest

from dynamo_core.frontend.chat_output import ChatOutput
from dynamo_core.frontend.errors import BadRequestError
from dynamo_core.frontend.structured import tool_plan
from dynamo_core.protocols.discovery import ModelCard
from dynamo_core.protocols.openai import ChatCompletionRequest, ChatMessage

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _card(structured: bool) -> ModelCard:
    return ModelCard(served_name="m", tokenizer="builtin:bytes", context_length=64, block_size=16,
                     kv_capacity_blocks=8, engine="vllm" if structured else "mocker", structured_output=structured)


def _request(tool_choice) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content="x")], tools=[WEATHER, TIME],
                                 tool_choice=tool_choice)


@pytest.mark.parametrize("tool_choice", ["required", NAMED])
def test_forced_tool_choice_on_an_engine_without_structured_output_is_a_400(tool_choice) -> None:
    with pytest.raises(BadRequestError) as caught:
        tool_plan(_request(tool_choice), _card(structured=False))
    assert caught.value.param == "tool_choice"
    assert "mocker" in caught.value.message and "structured output" in caught.value.message


def test_named_function_constrains_to_its_arguments_and_reads_them_back() -> None:
    plan = tool_plan(_request(NAMED), _card(structured=True))
    assert plan.guided is not None and plan.guided.json_schema == WEATHER["function"]["parameters"]
    output = ChatOutput(None, plan)
    _, calls = output.whole('{"city": "Rome"}')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Rome"})]
    assert output.finish_reason("stop") == "stop"  # forced, as OpenAI reports it


def test_required_constrains_to_a_list_of_calls_and_streams_them_back() -> None:
    plan = tool_plan(_request("required"), _card(structured=True))
    assert plan.guided is not None and plan.guided.json_schema["minItems"] == 1
    output = ChatOutput(None, plan)
    said = '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Lima"}}]'
    pieces = [output.feed(said[:20]), output.feed(said[20:]), output.finish()]
    calls = [c for p in pieces for c in p.tool_calls]
    assert [(c.index, c.name) for c in calls] == [(0, "get_time"), (1, "get_weather")]
    assert output.finish_reason("stop") == "tool_calls"
