"""Structured output and tool choice: what a request asks the engine to constrain, checked.

`response_format` (OpenAI) and vLLM's `guided_json` / `guided_regex` / `guided_choice` /
`guided_grammar` become one `GuidedDecoding` for the engine. Engines that cannot constrain
their output (the model card says so) get a 400 rather than a silently ignored constraint.

`tool_choice` decides how a chat reply's text becomes tool calls (`ToolPlan`): `auto` parses it
with the model's `--tool-call-parser`; `required` and a named function constrain the engine to
JSON where it can (`required`: a list of `{"name", "parameters"}`; named: the function's
arguments), as vLLM does, and the gateway reads that JSON back as calls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from dynamo_core.frontend.errors import BadRequestError
from dynamo_core.protocols.discovery import ModelCard
from dynamo_core.protocols.engine import GuidedDecoding
from dynamo_core.protocols.openai import ChatCompletionRequest, SamplingFields


def guided_decoding(req: SamplingFields, card: ModelCard) -> GuidedDecoding | None:
    """The request's output constraint, or None; a 400 for a malformed or unsupported one."""
    asked: list[tuple[str, GuidedDecoding]] = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        asked.append(("response_format", GuidedDecoding(json_object=True)))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or not isinstance(fmt.json_schema.schema_, dict):
            raise BadRequestError("response_format of type 'json_schema' needs a 'json_schema.schema' object",
                                  param="response_format")
        asked.append(("response_format", GuidedDecoding(json_schema=fmt.json_schema.schema_)))
    if req.guided_json is not None:
        schema = req.guided_json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise BadRequestError(f"'guided_json' is not valid JSON: {exc}", param="guided_json") from None
        if not isinstance(schema, dict):
            raise BadRequestError("'guided_json' must be a JSON schema object", param="guided_json")
        asked.append(("guided_json", GuidedDecoding(json_schema=schema)))
    if req.guided_regex is not None:
        try:
            re.compile(req.guided_regex)
        except re.error as exc:
            raise BadRequestError(f"'guided_regex' is not a valid regular expression: {exc}", param="guided_regex") from None
        asked.append(("guided_regex", GuidedDecoding(regex=req.guided_regex)))
    if req.guided_choice is not None:
        if not req.guided_choice:
            raise BadRequestError("'guided_choice' must list at least one choice", param="guided_choice")
        asked.append(("guided_choice", GuidedDecoding(choice=list(req.guided_choice))))
    if req.guided_grammar is not None:
        asked.append(("guided_grammar", GuidedDecoding(grammar=req.guided_grammar)))
    if not asked:
        return None
    if len(asked) > 1:
        names = ", ".join(name for name, _ in asked)
        raise BadRequestError(f"give at most one output constraint; this request has {names}", param=asked[1][0])
    param, guided = asked[0]
    require_structured_output(card, param)
    return guided


def require_structured_output(card: ModelCard, param: str) -> None:
    if not card.structured_output:
        raise BadRequestError(
            f"model '{card.served_name}' runs on engine '{card.engine}', which does not support "
            f"structured output ('{param}')",
            param=param,
        )


ToolMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolPlan:
    mode: ToolMode
    parser: str | None = None  # the model's tool-call parser, for `auto`
    function: str | None = None  # for `named`
    guided: GuidedDecoding | None = None  # the engine constraint for `required` / `named`
    parallel: bool = True  # `parallel_tool_calls`: False keeps the first call only


def _tool_functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Function name -> its parameters schema; a 400 for a tool that is not a function."""
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise BadRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise BadRequestError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'",
                                  param="tools")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise BadRequestError(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        functions[name] = parameters
    return functions


def tool_plan(req: ChatCompletionRequest, card: ModelCard) -> ToolPlan:
    functions = _tool_functions(req.tools or [])
    choice = req.tool_choice
    if choice is None:
        # OpenAI's default: `auto` when tools are given. Without a parser there is nothing to
        # parse with, and the reply stays text.
        if functions and card.tool_call_parser:
            return ToolPlan("auto", card.tool_call_parser, parallel=req.parallel_tool_calls)
        return ToolPlan("none")
    if choice == "none":
        return ToolPlan("none")
    if not functions:
        raise BadRequestError("'tool_choice' needs 'tools'", param="tool_choice")
    if choice == "auto":
        if card.tool_call_parser is None:
            raise BadRequestError(
                f"'tool_choice': 'auto' needs a tool-call parser for model '{card.served_name}' "
                "(start its workers with --tool-call-parser)",
                param="tool_choice",
            )
        return ToolPlan("auto", card.tool_call_parser, parallel=req.parallel_tool_calls)
    if choice == "required":
        calls = {
            "type": "array",
            "minItems": 1,
            "items": {"anyOf": [
                {"type": "object", "properties": {"name": {"const": name}, "parameters": params},
                 "required": ["name", "parameters"]}
                for name, params in functions.items()
            ]},
        }
        if not req.parallel_tool_calls:
            calls["maxItems"] = 1
        return ToolPlan("required", guided=_tool_guided(card, calls), parallel=req.parallel_tool_calls)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if name is None:
            raise BadRequestError("'tool_choice' must be 'none', 'auto', 'required' or "
                                  "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
        if name not in functions:
            raise BadRequestError(f"'tool_choice' names function '{name}', which is not in 'tools'", param="tool_choice")
        return ToolPlan("named", function=name, guided=_tool_guided(card, functions[name]))
    raise BadRequestError("'tool_choice' must be 'none', 'auto', 'required' or a named function", param="tool_choice")


def _tool_guided(card: ModelCard, schema: dict[str, Any]) -> GuidedDecoding | None:
    # An engine that cannot constrain still gets the request; the gateway then reads whatever
    # JSON the model wrote, and text that is not such JSON stays content.
    return GuidedDecoding(json_schema=schema) if card.structured_output else None
