"""A chat choice's text, split by the model's output parsers into the message's fields.

The worker's model card names the parsers (`--reasoning-parser`, `--tool-call-parser`) and the
request's `tool_choice` decides how tool calls are read (`ToolPlan`, structured.py). One
`ChatOutput` per choice applies them, in that order, to a whole text (non-streaming) or to
streamed text deltas, which come out as the pieces of each field that are safe to send now:

- reasoning first: `<think>` text becomes `reasoning` and never reaches the tool parser;
- `auto`: the tool-call parser streams content and emits each call once it is complete;
- `required` / named function: the output is JSON (the engine was constrained to it where it
  can be), so it is held to the end and read as calls; text that is not such JSON is content.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamo_core.frontend.reasoning import ReasoningParser, get_reasoning_parser
from dynamo_core.frontend.structured import ToolPlan
from dynamo_core.frontend.tool_parsers import ToolCall, ToolCallDelta, ToolParser, calls_from_json, get_tool_parser

NO_TOOLS = ToolPlan("none")


@dataclass
class MessageDelta:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


class ChatOutput:
    def __init__(self, reasoning_parser: str | None, tools: ToolPlan = NO_TOOLS):
        self._reasoning: ReasoningParser | None = (
            get_reasoning_parser(reasoning_parser)() if reasoning_parser else None
        )
        self._plan = tools
        self._tools: ToolParser | None = (
            get_tool_parser(tools.parser)() if tools.mode == "auto" and tools.parser else None
        )
        self._held_json: list[str] | None = [] if tools.mode in ("required", "named") else None
        self.called = False  # whether any tool call came out

    @property
    def passthrough(self) -> bool:
        """No parser applies: text goes out unchanged as content."""
        return self._reasoning is None and self._tools is None and self._held_json is None

    def finish_reason(self, engine_reason: str) -> str:
        """OpenAI's reason: `tool_calls` when the model chose to call (not when a named
        function was forced, where OpenAI says `stop`)."""
        if self.called and self._plan.mode in ("auto", "required") and engine_reason == "stop":
            return "tool_calls"
        return engine_reason

    def feed(self, text: str) -> MessageDelta:
        out = MessageDelta()
        if self._reasoning is not None:
            split = self._reasoning.feed(text)
            out.reasoning, text = split.reasoning, split.content
        self._content(text, out, final=False)
        return out

    def finish(self) -> MessageDelta:
        out = MessageDelta()
        text = ""
        if self._reasoning is not None:
            split = self._reasoning.finish()
            out.reasoning, text = split.reasoning, split.content
        self._content(text, out, final=True)
        return out

    def whole(self, text: str) -> tuple[MessageDelta, list[ToolCall]]:
        """A whole output: its fields, with the calls merged from their deltas."""
        first, rest = self.feed(text), self.finish()
        merged = MessageDelta(first.content + rest.content, first.reasoning + rest.reasoning)
        calls: dict[int, ToolCall] = {}
        for delta in first.tool_calls + rest.tool_calls:
            call = calls.get(delta.index)
            if call is None:
                calls[delta.index] = ToolCall(name=delta.name or "", arguments=delta.arguments, id=delta.id or "")
            else:
                call.arguments += delta.arguments
        return merged, [calls[i] for i in sorted(calls)]

    def _content(self, text: str, out: MessageDelta, *, final: bool) -> None:
        if self._tools is not None:
            piece = self._tools.feed(text) if text else None
            end = self._tools.finish() if final else None
            for part in (piece, end):
                if part is not None:
                    out.content += part.content
                    out.tool_calls += part.tool_calls
        elif self._held_json is not None:
            self._held_json.append(text)
            if final:
                held = "".join(self._held_json)
                calls = calls_from_json(held, self._plan.function if self._plan.mode == "named" else None)
                if calls is None:
                    out.content += held
                else:
                    out.tool_calls += [ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments)
                                       for i, c in enumerate(calls)]
        else:
            out.content += text
        if not self._plan.parallel:
            out.tool_calls = [c for c in out.tool_calls if c.index == 0]
        if out.tool_calls:
            self.called = True
