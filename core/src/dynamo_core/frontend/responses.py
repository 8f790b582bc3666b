"""`POST /v1/responses`: OpenAI's Responses API, served by the chat pipeline.

A Responses request is translated into the chat request it means (`input` and
`instructions` -> messages, flat function tools -> chat tools, `max_output_tokens` ->
`max_tokens`, `text.format` -> `response_format`), so templating, tool choice, routing and the
reasoning and tool-call parsers are the chat endpoint's own. What differs is the output: a
list of items (`reasoning`, `message`, `function_call`) instead of one message, and a stream
of typed, numbered events instead of chunks.

Stateless: no response is kept, so `store: true` and `previous_response_id` are a 400 (send
the earlier turns, as returned, in `input` instead).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Response as HttpResponse
from litestar.response import Stream

from dynamo_core.frontend.chat_output import ChatOutput, MessageDelta
from dynamo_core.frontend.completions import SSE_HEADERS, ServingState, chain_deltas, collect_choices, CollectedChoice, start_generation, decode_body, find_model
from dynamo_core.frontend.errors import BadRequestError, OpenAIError
from dynamo_core.frontend.stages import UsageCounter
from dynamo_core.frontend.preprocessor import prepare_chat
from dynamo_core.frontend.structured import tool_plan
from dynamo_core.protocols.openai import ChatCompletionRequest, ChatMessage, ResponseFormat
from dynamo_core.protocols.responses import (
    ContentPartAdded,
    ContentPartDone,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    MessageItem,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningText,
    ReasoningTextDelta,
    ReasoningTextDone,
    Response,
    ResponseCompleted,
    ResponseCreated,
    ResponseIncomplete,
    ResponseInProgress,
    ResponsesRequest,
    ResponseUsage,
    StreamError,
)

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ResponsesRequest)
_TEXT_PARTS = ("input_text", "output_text", "text")

# ---------------------------------------------------------------------------------------------
# request -> chat request
# ---------------------------------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadRequestError(f"{where}: content part of type {kind!r} is not supported (text parts only)",
                                      param="input")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequestError(f"{where}: 'content' must be a string or a list of text parts", param="input")


def _messages(req: ResponsesRequest) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    if req.instructions:
        messages.append(ChatMessage(role="system", content=req.instructions))
    if isinstance(req.input, str):
        return [*messages, ChatMessage(role="user", content=req.input)]
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequestError(f"{where}: role must be user, system, developer or assistant", param="input")
            # Chat templates know "system"; OpenAI's "developer" is the same place.
            messages.append(ChatMessage(role="system" if role == "developer" else role,
                                        content=_text_of(item.get("content"), where)))
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            if not all(isinstance(v, str) for v in (call["id"], call["function"]["name"], call["function"]["arguments"])):
                raise BadRequestError(f"{where}: a function_call needs string call_id, name and arguments", param="input")
            if messages and messages[-1].role == "assistant" and messages[-1].tool_calls is not None:
                messages[-1].tool_calls.append(call)  # parallel calls of one turn
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str):
                raise BadRequestError(f"{where}: a function_call_output needs a string call_id", param="input")
            messages.append(ChatMessage(role="tool", tool_call_id=item["call_id"],
                                        content=output if isinstance(output, str) else _text_of(output, where)))
        elif kind == "reasoning":
            continue  # earlier reasoning: templates drop it from past turns anyway
        else:
            raise BadRequestError(f"{where}: input items of type {kind!r} are not supported", param="input")
    if not messages:
        raise BadRequestError("'input' must hold at least one item", param="input")
    return messages


def _chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequestError(f"tools[{i}]: only function tools are supported, not {kind!r}", param="tools")
        function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        out.append({"type": "function", "function": function})
    return out


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(text: dict[str, Any] | None) -> ResponseFormat | None:
    fmt = (text or {}).get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        raise BadRequestError("'text.format.type' must be text, json_object or json_schema", param="text.format")
    if fmt["type"] == "json_object":
        return ResponseFormat(type="json_object")
    schema = {"name": fmt.get("name", "response"), "schema": fmt.get("schema")}
    return msgspec.convert({"type": "json_schema", "json_schema": schema}, ResponseFormat)


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request a Responses request means; a 400 for what this gateway cannot do."""
    if req.previous_response_id is not None:
        raise BadRequestError("responses are not stored here, so 'previous_response_id' cannot be resolved; "
                              "send the earlier turns in 'input'", param="previous_response_id")
    if req.store:
        raise BadRequestError("responses are not stored here; send 'store': false (or leave it out)", param="store")
    return ChatCompletionRequest(
        model=req.model, messages=_messages(req), max_tokens=req.max_output_tokens, temperature=req.temperature,
        top_p=req.top_p, seed=req.seed, tools=_chat_tools(req.tools), tool_choice=_chat_tool_choice(req.tool_choice),
        parallel_tool_calls=req.parallel_tool_calls, response_format=_response_format(req.text), user=req.user,
    )


# ---------------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(counter: UsageCounter) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=counter.prompt_tokens, output_tokens=counter.completion_tokens,
        total_tokens=counter.prompt_tokens + counter.completion_tokens,
        input_tokens_details=InputTokensDetails(counter.cached_tokens), output_tokens_details=OutputTokensDetails(),
    )


def _response(req: ResponsesRequest, response_id: str, created: int, model: str, output: list[OutputItem],
              status: str, usage: ResponseUsage | None = None) -> Response:
    return Response(
        id=response_id, created_at=created, model=model, status=status, output=output,  # type: ignore[arg-type]
        instructions=req.instructions, max_output_tokens=req.max_output_tokens, temperature=req.temperature,
        top_p=req.top_p, tools=req.tools or [], tool_choice=req.tool_choice or "auto",
        parallel_tool_calls=req.parallel_tool_calls, usage=usage if usage is not None else msgspec.UNSET, metadata=req.metadata or {},
        incomplete_details=IncompleteDetails("max_output_tokens") if status == "incomplete" else None,
    )


def _status(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


async def create_response(state: ServingState, body: bytes) -> HttpResponse:
    req: ResponsesRequest = decode_body(_decoder, body)
    chat = chat_request(req)
    model = find_model(state, req.model)
    plan = tool_plan(chat, model.card)
    response_id = _new_id("resp")
    choices = await prepare_chat(model, chat, response_id, tool_guided=plan.guided, body_chars=len(body))
    usage, tracker, first, deltas = await start_generation(state, model, choices, [], "responses")
    created = int(time.time())
    output = ChatOutput(model.card.reasoning_parser, plan)
    if req.stream:
        stream = _EventStream(req, response_id, created, model.name, output)
        return Stream(stream.events(first, deltas, usage, tracker), media_type="text/event-stream", headers=SSE_HEADERS)
    result = (await collect_choices(first, deltas, tracker, usage)).get(0, CollectedChoice())
    message, calls = output.whole("".join(result.texts))
    items: list[OutputItem] = []
    if message.reasoning:
        items.append(ReasoningItem(id=_new_id("rs"), status="completed", content=[ReasoningText(text=message.reasoning)]))
    if message.content or not (message.reasoning or calls):
        items.append(MessageItem(id=_new_id("msg"), status=_status(result.finish),
                                 content=[OutputText(text=message.content)]))
    items += [FunctionCallItem(id=_new_id("fc"), call_id=c.id, name=c.name, arguments=c.arguments, status="completed")
              for c in calls]
    response = _response(req, response_id, created, model.name, items, _status(result.finish), _usage(usage))
    return HttpResponse(_json.encode(response), media_type="application/json")


class _EventStream:
    """Output pieces -> OpenAI's event sequence: response.created, response.in_progress, then for
    each item output_item.added, (content_part.added, *.delta..., *.done, content_part.done |
    function_call_arguments.delta/.done), output_item.done; last response.completed (or
    response.incomplete at max_output_tokens)."""

    def __init__(self, req: ResponsesRequest, response_id: str, created: int, model: str, output: ChatOutput):
        self.req, self.id, self.created, self.model, self.output = req, response_id, created, model, output
        self.sequence = 0
        self.items: list[OutputItem] = []  # done ones
        self.open: ReasoningItem | MessageItem | None = None
        self.text = ""  # the open item's text so far

    def _event(self, cls, **fields) -> bytes:
        event = cls(sequence_number=self.sequence, **fields)
        self.sequence += 1
        return b"event: " + event.__struct_config__.tag.encode() + b"\ndata: " + _json.encode(event) + b"\n\n"

    def _lifecycle(self, cls, status: str, usage: ResponseUsage | None = None) -> bytes:
        output = list(self.items)
        return self._event(cls, response=_response(self.req, self.id, self.created, self.model, output, status, usage))

    def _open(self, kind: type) -> list[bytes]:
        if isinstance(self.open, kind):
            return []
        out = self._close("completed")
        index = len(self.items)
        if kind is ReasoningItem:
            self.open = ReasoningItem(id=_new_id("rs"), status="in_progress", content=[])
            part: OutputText | ReasoningText = ReasoningText(text="")
        else:
            self.open = MessageItem(id=_new_id("msg"), status="in_progress", content=[])
            part = OutputText(text="")
        out.append(self._event(OutputItemAdded, output_index=index, item=self.open))
        out.append(self._event(ContentPartAdded, item_id=self.open.id, output_index=index, content_index=0, part=part))
        return out

    def _close(self, status: str) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index, text, self.text = len(self.items), self.text, ""
        ids = {"item_id": item.id, "output_index": index, "content_index": 0}
        if isinstance(item, ReasoningItem):
            part: OutputText | ReasoningText = ReasoningText(text=text)
            done = self._event(ReasoningTextDone, text=text, **ids)
            item.content = [part]
            item.status = "completed"
        else:
            part = OutputText(text=text)
            done = self._event(OutputTextDone, text=text, **ids)
            item.content = [part]
            item.status = status  # type: ignore[assignment]
        self.items.append(item)
        return [done, self._event(ContentPartDone, part=part, **ids),
                self._event(OutputItemDone, output_index=index, item=item)]

    def _pieces(self, piece: MessageDelta) -> list[bytes]:
        out: list[bytes] = []
        if piece.reasoning:
            out += self._open(ReasoningItem)
            self.text += piece.reasoning
            out.append(self._event(ReasoningTextDelta, item_id=self.open.id, output_index=len(self.items),
                                   content_index=0, delta=piece.reasoning))
        if piece.content:
            out += self._open(MessageItem)
            self.text += piece.content
            out.append(self._event(OutputTextDelta, item_id=self.open.id, output_index=len(self.items),
                                   content_index=0, delta=piece.content))
        for call in piece.tool_calls:  # each call arrives whole (chat_output.py)
            out += self._close("completed")
            index = len(self.items)
            item = FunctionCallItem(id=_new_id("fc"), call_id=call.id or _new_id("call"), name=call.name or "",
                                    arguments="", status="in_progress")
            out.append(self._event(OutputItemAdded, output_index=index, item=item))
            out.append(self._event(FunctionCallArgumentsDelta, item_id=item.id, output_index=index, delta=call.arguments))
            out.append(self._event(FunctionCallArgumentsDone, item_id=item.id, output_index=index, arguments=call.arguments))
            done = FunctionCallItem(id=item.id, call_id=item.call_id, name=item.name, arguments=call.arguments,
                                    status="completed")
            self.items.append(done)
            out.append(self._event(OutputItemDone, output_index=index, item=done))
        return out

    async def events(self, first, deltas, usage: UsageCounter, tracker) -> AsyncIterator[bytes]:
        status = "ok"
        try:
            yield self._lifecycle(ResponseCreated, "in_progress")
            yield self._lifecycle(ResponseInProgress, "in_progress")
            finish = None
            async for delta in chain_deltas(first, deltas):
                tracker.on_delta(delta)
                for event in self._pieces(self.output.feed(delta.text)):
                    yield event
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
            for event in self._pieces(self.output.finish()):
                yield event
            if not self.items and self.open is None:  # an empty reply is still a message
                for event in self._open(MessageItem):
                    yield event
            final = _status(finish)
            for event in self._close(final):
                yield event
            yield self._lifecycle(ResponseIncomplete if final == "incomplete" else ResponseCompleted, final, _usage(usage))
        except Exception as exc:
            status = type(exc).__name__
            if isinstance(exc, OpenAIError):
                yield self._event(StreamError, message=exc.message, code=exc.code, param=exc.param)
            else:
                yield self._event(StreamError, message=f"internal error: {type(exc).__name__}", code="internal_error")
        finally:
            await deltas.aclose()
            tracker.finish(status, usage)
