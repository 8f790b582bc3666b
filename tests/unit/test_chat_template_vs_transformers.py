"""The gateway renders chat templates exactly as `transformers`' `apply_chat_template` does.

Each family below has a template written here in the style of a popular model family (Llama 3.x,
Qwen3, Mistral v0.3, DeepSeek-R1, Granite 3.x) and a set of conversations. Every conversation is
rendered by `transformers` (`apply_chat_template(..., tokenize=False)`, given messages in the form
its documentation asks for: text content, tool-call arguments as objects) and by the gateway,
given the same messages and given them as an OpenAI client sends them (see `openai_wire`); all
three strings must be identical.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import shutil
import types
from pathlib import Path
from typing import Any

import jinja2
import msgspec
import pytest
import transformers
import transformers.utils.chat_template_utils as hf_chat_template_utils

import dynamo_core.frontend.chat_template as chat_template_module
from dynamo_core.frontend.chat_template import ChatTemplateError, TemplateError, render_chat_template
from dynamo_core.frontend.errors import BadRequestError
from dynamo_core.frontend.prompt_encoding import tokenize_for_endpoint
from dynamo_core.protocols.openai import TokenizeRequest
from dynamo_core.tokenizer import TokenizerBundle, load_tokenizer

# --- templates ---------------------------------------------------------------------------------

LLAMA3 = r"""
{{- bos_token }}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call one, reply with JSON for a function call.\n" }}
    {{- 'Use the format {"name": function name, "parameters": dictionary of argument name and its value}.\n\n' }}
    {%- for tool in tools %}
        {{- tool | tojson(indent=4) + "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message + "<|eot_id|>" }}
{%- if tools is not none and tools_in_user_message %}
    {%- if messages | length == 0 %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {%- set first_user_message = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
    {{- "<|start_header_id|>user<|end_header_id|>\n\n" }}
    {{- "Given the following functions, reply with a JSON function call that best answers the prompt.\n" }}
    {{- 'Use the format {"name": function name, "parameters": dictionary of argument name and its value}.\n\n' }}
    {%- for tool in tools %}
        {{- tool | tojson(indent=4) + "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
    {%- if 'tool_calls' in message %}
        {%- if message.tool_calls | length != 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set call = message.tool_calls[0].function %}
        {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}
        {{- '{"name": "' + call.name + '", "parameters": ' + call.arguments | tojson + "}<|eot_id|>" }}
    {%- elif message.role in ["tool", "ipython"] %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- "<|start_header_id|>" + message.role + "<|end_header_id|>\n\n" + message.content | trim + "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}
{%- endif %}
"""

QWEN3 = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" }}
    {{- "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" + tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{#- The last real user query: reasoning of assistant turns before it is dropped. #}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages | length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages | length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string
          and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- if ns.multi_step_tool %}
    {{- raise_exception('No user query found in messages.') }}
{%- endif %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>assistant\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\n' + content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if not loop.first or content %}
                {{- '\n' }}
            {%- endif %}
            {%- set call = tool_call.function if tool_call.function else tool_call %}
            {{- '<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}
            {%- if call.arguments is string %}
                {{- call.arguments }}
            {%- else %}
                {{- call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or messages[loop.index0 - 1].role != "tool" %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != "tool" %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

MISTRAL = r"""
{%- if messages[0].role == "system" %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{#- User and assistant turns alternate; tool calls and their results do not count. #}
{%- set ns = namespace(index=0) %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.tool_calls is defined) %}
        {%- if (message.role == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message.role == "user" %}
        {%- if tools is not none and message == user_messages[-1] %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, value in tool.function.items() if key != "return" %}
                    {%- if value is string %}
                        {{- '"' + key + '": "' + value + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + value | tojson }}
                    {%- endif %}
                    {%- if not loop.last %}{{- ", " }}{%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}{{- ", " }}{%- endif %}
            {%- endfor %}
            {{- "][/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message.content + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message.content + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.id is not defined or tool_call.id | length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {%- set out = tool_call.function | tojson %}
            {{- out[:-1] + ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}{{- ", " }}{%- endif %}
        {%- endfor %}
        {{- "]" + eos_token }}
    {%- elif message.role == "assistant" %}
        {{- " " + message.content | trim + eos_token }}
    {%- elif message.role == "tool" %}
        {%- if message.tool_call_id is not defined or message.tool_call_id | length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content | string + ', "call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user, assistant and tool roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

DEEPSEEK_R1 = r"""
{%- set ns = namespace(system_prompt='', is_tool=false) %}
{%- for message in messages if message.role == 'system' %}
    {%- set ns.system_prompt = ns.system_prompt + ('\n\n' if ns.system_prompt else '') + message.content %}
{%- endfor %}
{{- bos_token + ns.system_prompt }}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.is_tool = false %}
        {{- '<｜User｜>' + message.content }}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<｜Assistant｜>' + (message.content or '') + '<｜tool▁calls▁begin｜>' }}
        {%- for call in message.tool_calls %}
            {#- DeepSeek's templates write the arguments as the JSON text they are in OpenAI messages. #}
            {{- '<｜tool▁call▁begin｜>' + call.type + '<｜tool▁sep｜>' + call.function.name
                + '\n```json\n' + call.function.arguments + '\n```<｜tool▁call▁end｜>' }}
        {%- endfor %}
        {{- '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' }}
    {%- elif message.role == 'assistant' %}
        {%- if ns.is_tool %}
            {{- '<｜tool▁outputs▁end｜>' }}
            {%- set ns.is_tool = false %}
        {%- endif %}
        {#- Past reasoning is not shown to the model again. #}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1] %}
        {%- endif %}
        {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
    {%- elif message.role == 'tool' %}
        {%- if not ns.is_tool %}
            {{- '<｜tool▁outputs▁begin｜>' }}
            {%- set ns.is_tool = true %}
        {%- endif %}
        {{- '<｜tool▁output▁begin｜>' + message.content + '<｜tool▁output▁end｜>' }}
    {%- endif %}
{%- endfor %}
{%- if ns.is_tool %}
    {{- '<｜tool▁outputs▁end｜>' }}
{%- endif %}
{%- if add_generation_prompt %}
    {{- '<｜Assistant｜><think>\n' }}
{%- endif %}
"""

GRANITE = r"""
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Knowledge Cutoff Date: April 2024.\nToday's Date: " + strftime_now('%B %d, %Y') + ".\nYou are Granite." %}
    {%- if tools and documents %}
        {%- set system_message = system_message + " You can call tools with <|tool_call|> and answer from the documents." %}
    {%- elif tools %}
        {%- set system_message = system_message + " You can call tools with <|tool_call|> followed by a JSON list." %}
    {%- elif documents %}
        {%- set system_message = system_message + " Answer strictly from the documents provided." %}
    {%- else %}
        {%- set system_message = system_message + " You are a helpful AI assistant." %}
    {%- endif %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\n' }}
{%- if tools %}
    {{- '<|start_of_role|>tools<|end_of_role|>' + tools | tojson(indent=4) + '<|end_of_text|>\n' }}
{%- endif %}
{%- if documents %}
    {{- '<|start_of_role|>documents<|end_of_role|>' }}
    {%- for document in documents %}
        {{- 'Document ' + loop.index0 | string + '\n' }}
        {%- if document.title %}
            {{- 'Title: ' + document.title + '\n' }}
        {%- endif %}
        {{- document.text }}
        {%- if not loop.last %}
            {{- '\n\n' }}
        {%- endif %}
    {%- endfor %}
    {{- '<|end_of_text|>\n' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role == 'assistant' and message.tool_calls %}
        {{- '<|start_of_role|>assistant<|end_of_role|><|tool_call|>'
            + message.tool_calls | map(attribute='function') | list | tojson + '<|end_of_text|>\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|start_of_role|>tool_response<|end_of_role|>' + message.content + '<|end_of_text|>\n' }}
    {%- else %}
        {{- '<|start_of_role|>' + message.role + '<|end_of_role|>' + message.content + '<|end_of_text|>\n' }}
    {%- endif %}
    {%- if loop.last and add_generation_prompt %}
        {{- '<|start_of_role|>assistant' }}
        {%- if controls %}
            {{- ' ' + controls | tojson }}
        {%- endif %}
        {{- '<|end_of_role|>' }}
    {%- endif %}
{%- endfor %}
"""


@dataclasses.dataclass(frozen=True)
class Family:
    template: str
    bos_token: str | None
    eos_token: str


FAMILIES = {
    "llama3": Family(LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen3": Family(QWEN3, None, "<|im_end|>"),  # Qwen has no BOS token
    "mistral": Family(MISTRAL, "<s>", "</s>"),
    "deepseek_r1": Family(DEEPSEEK_R1, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "granite": Family(GRANITE, "<|end_of_text|>", "<|end_of_text|>"),
}

# --- conversations, in the form transformers documents -----------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "e.g. Köln"},
                                                     "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [WEATHER, CLOCK]
DOCUMENTS = [{"title": "Rhine", "text": "The Rhine flows through Köln."},
             {"text": "Köln's cathedral was finished in 1880."}]


def call(name: str, arguments: dict[str, Any], call_id: str = "call12345") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


SYSTEM = {"role": "system", "content": "You are terse.\nAnswer in one line."}
ASK = {"role": "user", "content": "What's the weather in Köln?"}
WEATHER_CALL = {"role": "assistant", "tool_calls": [call("get_weather", {"city": "Köln", "unit": "c"})]}
WEATHER_RESULT = {"role": "tool", "tool_call_id": "call12345", "content": '{"temperature": 21, "sky": "clear"}'}
PLAIN = [{"role": "user", "content": "Hello!"}]
MULTI_TURN = [SYSTEM, {"role": "user", "content": "Capital of France?"},
              {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?\nJust the name."}]
TOOL_ROUND_TRIP = [SYSTEM, ASK, WEATHER_CALL, WEATHER_RESULT]
CONTINUE = [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once upon a time "}]

# (family, id, messages, apply_chat_template's other arguments)
CASES = [
    ("llama3", "plain", PLAIN, {}),
    ("llama3", "system_multi_turn", MULTI_TURN, {}),
    ("llama3", "no_generation_prompt", MULTI_TURN[:3], {"add_generation_prompt": False}),
    ("llama3", "date_string_kwarg", PLAIN, {"chat_template_kwargs": {"date_string": "01 Jan 2025"}}),
    ("llama3", "tools_in_user_turn", [SYSTEM, ASK], {"tools": TOOLS}),
    ("llama3", "tool_round_trip", TOOL_ROUND_TRIP + [{"role": "assistant", "content": "21°C, clear."}],
     {"tools": TOOLS, "add_generation_prompt": False}),
    ("llama3", "ipython_result_tools_in_system", [ASK, WEATHER_CALL, {"role": "ipython", "content": "21°C"}],
     {"tools": TOOLS, "chat_template_kwargs": {"tools_in_user_message": False}}),
    ("llama3", "continue_final_message", CONTINUE, {"add_generation_prompt": False, "continue_final_message": True}),
    ("qwen3", "plain", PLAIN, {}),
    ("qwen3", "thinking_off", MULTI_TURN, {"chat_template_kwargs": {"enable_thinking": False}}),
    ("qwen3", "past_reasoning_dropped", [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "<think>\nThree and three.\n</think>\n\n6"},
        {"role": "user", "content": "Thanks!"}], {}),
    ("qwen3", "tool_loop_keeps_reasoning", [SYSTEM, ASK, {
        "role": "assistant", "content": "Checking both.", "reasoning_content": "I need weather and time.",
        "tool_calls": [call("get_weather", {"city": "Köln"}), call("get_time", {"city": "Köln"}, "call67890")]},
        WEATHER_RESULT, {"role": "tool", "tool_call_id": "call67890", "content": "14:05"}],
     {"tools": TOOLS, "chat_template_kwargs": {"enable_thinking": True}}),
    ("qwen3", "reasoning_under_vllm_name", [ASK, {**WEATHER_CALL, "reasoning": "Call the weather tool."},
                                            WEATHER_RESULT], {"tools": [WEATHER]}),
    ("qwen3", "continue_final_message", [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n1, 2,"}],
     {"add_generation_prompt": False, "continue_final_message": True}),
    ("mistral", "plain", PLAIN, {}),
    ("mistral", "system_multi_turn", MULTI_TURN, {}),
    ("mistral", "tool_round_trip", TOOL_ROUND_TRIP + [
        {"role": "assistant", "content": "It is 21°C and clear."}, {"role": "user", "content": "Thanks."}],
     {"tools": TOOLS}),
    ("mistral", "continue_final_message", CONTINUE, {"add_generation_prompt": False, "continue_final_message": True}),
    ("deepseek_r1", "plain", PLAIN, {}),
    ("deepseek_r1", "reasoning_stripped_from_history", [
        SYSTEM, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nTwo plus two.\n</think>\n\n4"},
        {"role": "user", "content": "Times 3?"}], {}),
    ("deepseek_r1", "continue_final_message", [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nSimple: "}],
     {"add_generation_prompt": False, "continue_final_message": True}),
    ("granite", "documents_and_date", [{"role": "user", "content": "Where is the cathedral?"}],
     {"documents": DOCUMENTS}),
    ("granite", "tools_documents_controls", [ASK, WEATHER_CALL, WEATHER_RESULT],
     {"tools": [WEATHER], "documents": DOCUMENTS, "chat_template_kwargs": {"controls": {"citations": True}}}),
    ("granite", "system_no_generation_prompt", MULTI_TURN, {"add_generation_prompt": False}),
]


def openai_wire(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation as OpenAI clients send it: tool-call arguments as (compact) JSON text,
    multi-line content as a list of text parts, and the nulls an SDK's response objects carry
    when they are sent back (`"tool_calls": null` on a plain assistant turn, ...)."""
    out = []
    for message in messages:
        message = {"name": None, **message}
        if message["role"] == "assistant":
            message = {"content": None, "tool_calls": None, "refusal": None, **message}
            message["tool_calls"] = message["tool_calls"] and [
                {**tool_call, "function": {**tool_call["function"], "arguments": json.dumps(
                    tool_call["function"]["arguments"], separators=(",", ":"), ensure_ascii=False)}}
                for tool_call in message["tool_calls"]
            ]
        if isinstance(message["content"], str) and "\n" in message["content"]:
            message["content"] = [{"type": "text", "text": line} for line in message["content"].split("\n")]
        out.append(message)
    return out


# --- fixtures ----------------------------------------------------------------------------------


class FrozenClock(dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2024, 7, 26, 9, 30, tzinfo=tz)


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    """Both `strftime_now`s read the same frozen clock, so dated prompts compare exactly."""
    monkeypatch.setattr(chat_template_module, "datetime", FrozenClock)
    monkeypatch.setattr(hf_chat_template_utils, "datetime", FrozenClock)


@pytest.fixture(scope="module")
def tokenizer_file(mistral_tokenizer_dir: Path) -> Path:
    return mistral_tokenizer_dir / "tokenizer.json"


@pytest.fixture(scope="module")
def base_bundle(mistral_tokenizer_dir: Path) -> TokenizerBundle:
    return load_tokenizer(str(mistral_tokenizer_dir))


@pytest.fixture(scope="module")
def family_bundle(base_bundle):
    def bundle(family: str) -> TokenizerBundle:
        f = FAMILIES[family]
        return dataclasses.replace(base_bundle, chat_template=f.template, bos_token=f.bos_token, eos_token=f.eos_token)
    return bundle


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_file):
    @functools.cache
    def tokenizer(family: str) -> transformers.PreTrainedTokenizerFast:
        f = FAMILIES[family]
        # The same special tokens as the bundle: transformers passes its special_tokens_map to the template.
        return transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(tokenizer_file), bos_token=f.bos_token, eos_token=f.eos_token,
            chat_template=f.template,
        )
    return tokenizer


def tokenize_request(bundle, messages, kwargs):
    """What `POST /tokenize` returns for a client's JSON body: the request path of chat (msgspec
    decoding, the preprocessor's call of the renderer), as token ids."""
    body = {"model": "m", "messages": openai_wire(messages), **kwargs}
    request = msgspec.json.decode(json.dumps(body).encode(), type=TokenizeRequest)
    return tokenize_for_endpoint(types.SimpleNamespace(tokenizer=bundle), request)


def hf_render(tokenizer, messages, *, chat_template_kwargs=None, add_generation_prompt=True, **kwargs) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs, **(chat_template_kwargs or {})
    )


def gateway_render(bundle, messages, *, chat_template_kwargs=None, **kwargs) -> str:
    return render_chat_template(bundle, messages, template_kwargs=chat_template_kwargs, **kwargs)


# --- the same prompt ---------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "messages", "kwargs"), [c[:1] + c[2:] for c in CASES],
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_renders_as_transformers(family, messages, kwargs, family_bundle, hf_tokenizer):
    expected = hf_render(hf_tokenizer(family), messages, **kwargs)
    bundle = family_bundle(family)
    assert gateway_render(bundle, messages, **kwargs) == expected
    assert gateway_render(bundle, openai_wire(messages), **kwargs) == expected
    assert tokenize_request(bundle, messages, kwargs) == bundle.encode(expected)


def test_the_cases_reach_what_they_are_about(family_bundle):
    # Guards against a template change silently skipping what a case is meant to exercise.
    def rendered(family, case_id):
        family_, _, messages, kwargs = next(c for c in CASES if c[:2] == (family, case_id))
        return gateway_render(family_bundle(family_), messages, **kwargs)

    assert "Today Date: 26 Jul 2024" in rendered("llama3", "plain")
    assert "Today Date: 01 Jan 2025" in rendered("llama3", "date_string_kwarg")
    assert '"parameters": {"city": "Köln", "unit": "c"}}' in rendered("llama3", "tool_round_trip")
    assert rendered("llama3", "continue_final_message").endswith("Once upon a time")
    assert rendered("qwen3", "thinking_off").endswith("<think>\n\n</think>\n\n")
    past = rendered("qwen3", "past_reasoning_dropped")
    assert "Two and two" not in past and "Three and three" not in past and "<|im_start|>assistant\n6<|im_end|>" in past
    loop = rendered("qwen3", "tool_loop_keeps_reasoning")
    assert "<think>\nI need weather and time.\n</think>\n\nChecking both.\n<tool_call>" in loop
    assert '{"name": "get_time", "arguments": {"city": "Köln"}}' in loop
    assert "<think>\nCall the weather tool.\n</think>" in rendered("qwen3", "reasoning_under_vllm_name")
    assert rendered("qwen3", "continue_final_message").endswith("<think>\nEasy.\n</think>\n\n1, 2,")
    assert "[TOOL_CALLS] [" in rendered("mistral", "tool_round_trip")
    assert "[INST] You are terse.\nAnswer in one line.\n\nThanks.[/INST]" in rendered("mistral", "tool_round_trip")
    assert rendered("mistral", "continue_final_message").endswith("[/INST] Once upon a time")
    assert "<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>" in rendered("deepseek_r1", "reasoning_stripped_from_history")
    assert "Today's Date: July 26, 2024." in rendered("granite", "documents_and_date")
    assert "Document 1\nKöln's cathedral" in rendered("granite", "documents_and_date")
    assert 'assistant {"citations": true}<|end_of_role|>' in rendered("granite", "tools_documents_controls")


@pytest.mark.parametrize("field", ["reasoning_content", "thinking", "reasoning"])
def test_reasoning_reaches_the_template_under_the_names_transformers_gives_it(field, family_bundle, hf_tokenizer):
    # gpt-oss's template reads `thinking`, most others `reasoning_content`; vLLM's field is `reasoning`.
    template = "{% for m in messages %}{{ m.thinking }}|{{ m.reasoning_content }}|{{ m.reasoning }};{% endfor %}"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "4", field: "2+2"}]
    expected = hf_render(hf_tokenizer("mistral"), messages, chat_template=template)
    assert expected == "||;2+2|2+2|" + ("2+2;" if field == "reasoning" else ";")
    assert gateway_render(family_bundle("mistral"), messages, template=template) == expected
    # A client's chat request carries the field under each of those names too.
    bundle = dataclasses.replace(family_bundle("mistral"), chat_template=template)
    assert tokenize_request(bundle, messages, {}) == bundle.encode(expected)


# --- tool-call arguments sent as JSON text -----------------------------------------------------


def test_json_text_arguments_render_as_transformers_renders_the_documented_objects(family_bundle, hf_tokenizer):
    """transformers passes arguments through as given and documents them as objects; OpenAI clients
    send JSON text. The gateway parses the text (as vLLM does), so an OpenAI conversation gets the
    prompt transformers gives the same conversation in its documented form. Passed through as
    text, templates that `tojson` the arguments would quote them a second time."""
    messages, kwargs = TOOL_ROUND_TRIP, {"tools": TOOLS}
    wire = openai_wire(messages)
    as_objects = hf_render(hf_tokenizer("llama3"), messages, **kwargs)
    as_text = hf_render(hf_tokenizer("llama3"), wire, **kwargs)
    assert gateway_render(family_bundle("llama3"), wire, **kwargs) == as_objects
    assert '"parameters": {"city": "Köln", "unit": "c"}}' in as_objects
    assert '"parameters": "{\\"city\\":\\"Köln\\",\\"unit\\":\\"c\\"}"}' in as_text  # transformers, text as given


def test_templates_that_concatenate_arguments_as_text_fail_as_in_transformers(family_bundle, hf_tokenizer):
    """DeepSeek's templates add the arguments to a string, so they need text; with the documented
    objects transformers fails as the gateway does (a 400), rather than render something else."""
    messages = [ASK, WEATHER_CALL, WEATHER_RESULT]
    with pytest.raises(TypeError, match="concatenate"):
        hf_render(hf_tokenizer("deepseek_r1"), messages)
    with pytest.raises(ChatTemplateError, match="cannot render these messages"):
        gateway_render(family_bundle("deepseek_r1"), openai_wire(messages))


# --- raise_exception ---------------------------------------------------------------------------

ERRORS = [
    ("llama3", [ASK, {"role": "assistant", "tool_calls": [call("get_weather", {"city": "Köln"}),
                                                          call("get_time", {"city": "Köln"}, "call67890")]}],
     {"tools": TOOLS}, "This model only supports single tool-calls at once!"),
    ("qwen3", [SYSTEM], {}, "No user query found in messages."),
    ("mistral", [SYSTEM, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}], {},
     "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."),
    ("mistral", [ASK, {"role": "assistant", "tool_calls": [call("get_weather", {"city": "Köln"}, "c1")]}], {},
     "Tool call IDs should be alphanumeric strings with length 9!"),
]


@pytest.mark.parametrize(("family", "messages", "kwargs", "message"), ERRORS,
                         ids=[f"{e[0]}-{e[3][:24]}" for e in ERRORS])
def test_raise_exception_is_a_400_carrying_the_templates_message(family, messages, kwargs, message,
                                                                 family_bundle, hf_tokenizer):
    with pytest.raises(jinja2.TemplateError) as in_transformers:
        hf_render(hf_tokenizer(family), messages, **kwargs)
    assert str(in_transformers.value) == message

    bundle = family_bundle(family)
    with pytest.raises(TemplateError) as in_gateway:
        gateway_render(bundle, openai_wire(messages), **kwargs)
    assert in_gateway.value.message == message

    # Through the request path: the JSON body a client posts becomes a 400 with that message.
    with pytest.raises(BadRequestError) as in_request:
        tokenize_request(bundle, messages, kwargs)
    assert in_request.value.status_code == 400
    assert in_request.value.message == message
    assert in_request.value.param == "messages"


def test_every_named_special_token_reaches_the_template_as_in_transformers(mistral_tokenizer_dir, tmp_path):
    # The test tokenizer's config names <unk>; add a pad token and additional special tokens.
    directory = tmp_path / "tok"
    shutil.copytree(mistral_tokenizer_dir, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.update(pad_token="</s>", additional_special_tokens=["[INST]", "[/INST]"])
    config["chat_template"] = (
        "{{ bos_token }}|{{ unk_token }}|{{ pad_token }}|{{ additional_special_tokens | join(',') }}|"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ eos_token }}"
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    messages = [{"role": "user", "content": "hi"}]
    expected = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory)).apply_chat_template(
        messages, tokenize=False)
    # (transformers 5 passes no additional_special_tokens to templates.)
    assert expected.startswith("<s>|<unk>|</s>|")
    assert render_chat_template(load_tokenizer(str(directory)), messages) == expected
