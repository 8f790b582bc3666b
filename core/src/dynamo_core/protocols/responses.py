"""The OpenAI Responses API boundary (`POST /v1/responses`): request, response and stream events.

Field names and event types follow OpenAI's specification and the `openai` SDK's
`types/responses` models, so the official client parses them. Stateless: nothing is stored,
so `store: true` and `previous_response_id` are refused (frontend/responses.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from dynamo_core.protocols.openai import Probability, Temperature, nulls_as_defaults

# ---------------------------------------------------------------------------------------------
# request
# ---------------------------------------------------------------------------------------------


class ResponsesRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    # A string (one user message) or a list of input items: messages (`{"role", "content"}`,
    # content a string or `input_text` parts), `function_call` and `function_call_output`.
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    # Function tools in the Responses shape: {"type": "function", "name", "description", "parameters"}.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True  # null: the default (nulls_as_defaults)
    stream: bool | None = False
    store: bool | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None  # e.g. {"effort": ...}: the model reasons as it does
    text: dict[str, Any] | None = None  # {"format": {"type": "text" | "json_object" | "json_schema", ...}}
    metadata: dict[str, str] | None = None
    user: str | None = None
    seed: int | None = None  # not OpenAI's, as in vLLM: the engine's seed

    def __post_init__(self) -> None:
        nulls_as_defaults(self)


# ---------------------------------------------------------------------------------------------
# output items
# ---------------------------------------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(msgspec.Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []


class ReasoningText(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning_text"):
    text: str


class MessageItem(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: ItemStatus
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class ReasoningItem(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning"):
    id: str
    status: ItemStatus
    content: list[ReasoningText]
    summary: list[dict[str, Any]] = []


class FunctionCallItem(msgspec.Struct, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text
    status: ItemStatus


OutputItem = MessageItem | ReasoningItem | FunctionCallItem


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # OpenAI's schema requires it; prefix caching here writes as it goes


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails


class IncompleteDetails(msgspec.Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class Response(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    model: str
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    output: list[OutputItem]
    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    usage: ResponseUsage | msgspec.UnsetType = msgspec.UNSET  # left out until the response is done
    incomplete_details: IncompleteDetails | None = None
    error: dict[str, Any] | None = None
    metadata: dict[str, str] = {}
    previous_response_id: None = None
    store: bool = False
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    object: Literal["response"] = "response"


# ---------------------------------------------------------------------------------------------
# stream events (`event: <type>` / `data: <event>`), numbered by `sequence_number`
# ---------------------------------------------------------------------------------------------


class ResponseLifecycleEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    """response.created / response.in_progress / response.completed / response.incomplete."""

    sequence_number: int
    response: Response


class ResponseCreated(ResponseLifecycleEvent, tag="response.created"):
    pass


class ResponseInProgress(ResponseLifecycleEvent, tag="response.in_progress"):
    pass


class ResponseCompleted(ResponseLifecycleEvent, tag="response.completed"):
    pass


class ResponseIncomplete(ResponseLifecycleEvent, tag="response.incomplete"):
    pass


class _ItemEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    sequence_number: int
    output_index: int
    item: OutputItem


class OutputItemAdded(_ItemEvent, tag="response.output_item.added"):
    pass


class OutputItemDone(_ItemEvent, tag="response.output_item.done"):
    pass


class _ContentEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    """An event about content part `content_index` of item `item_id` (output `output_index`)."""

    sequence_number: int
    item_id: str
    output_index: int
    content_index: int


class ContentPartAdded(_ContentEvent, tag="response.content_part.added"):
    part: OutputText | ReasoningText


class ContentPartDone(_ContentEvent, tag="response.content_part.done"):
    part: OutputText | ReasoningText


class OutputTextDelta(_ContentEvent, tag="response.output_text.delta"):
    delta: str
    logprobs: list[dict[str, Any]] = []


class OutputTextDone(_ContentEvent, tag="response.output_text.done"):
    text: str
    logprobs: list[dict[str, Any]] = []


class ReasoningTextDelta(_ContentEvent, tag="response.reasoning_text.delta"):
    delta: str


class ReasoningTextDone(_ContentEvent, tag="response.reasoning_text.done"):
    text: str


class _CallEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    sequence_number: int
    item_id: str
    output_index: int


class FunctionCallArgumentsDelta(_CallEvent, tag="response.function_call_arguments.delta"):
    delta: str


class FunctionCallArgumentsDone(_CallEvent, tag="response.function_call_arguments.done"):
    arguments: str


class StreamError(msgspec.Struct, kw_only=True, tag_field="type", tag="error"):
    """The stream failed after it started (OpenAI's `error` event)."""

    sequence_number: int
    message: str
    code: str | None = None
    param: str | None = None


ResponseStreamEvent = (
    ResponseCreated | ResponseInProgress | ResponseCompleted | ResponseIncomplete | OutputItemAdded | OutputItemDone
    | ContentPartAdded | ContentPartDone | OutputTextDelta | OutputTextDone | ReasoningTextDelta | ReasoningTextDone
    | FunctionCallArgumentsDelta | FunctionCallArgumentsDone | StreamError
)
