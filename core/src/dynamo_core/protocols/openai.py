"""The OpenAI API boundary: request and response bodies of the HTTP frontend.

Unknown request fields are accepted and ignored, as OpenAI's API does (documented in
docs/api.md). Range checks that msgspec constraints can express live here; checks that need
the model (context length) live in the preprocessor.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import msgspec

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
MAX_CHOICES = 16
ChoiceCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)]


def nulls_as_defaults(struct: msgspec.Struct) -> None:
    """OpenAI's schema lets a client send null for an optional field (`"n": null`, `"stream":
    null`) and means the default: fields typed `X | None = default` hold the default after
    decoding, so the code reading them never sees None. Call it from `__post_init__`."""
    for name, default in _non_null_defaults(type(struct)):
        if getattr(struct, name) is None:
            setattr(struct, name, default)


@functools.cache
def _non_null_defaults(cls: type[msgspec.Struct]) -> tuple[tuple[str, Any], ...]:
    """The fields of `cls` whose default is not None, with it. Once per class: walking a
    Struct's fields on every request took a quarter of the event loop's time under load."""
    return tuple(
        (field.name, field.default)
        for field in msgspec.structs.fields(cls)
        if field.default is not None and field.default is not msgspec.NODEFAULT
    )


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool = False


# OpenAI's roles ("function" is its deprecated one), plus "ipython", Llama 3's tool-result role
# that its chat templates render (vLLM accepts it too); another role is a 400, as OpenAI answers.
ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function", "ipython"]


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: ChatRole
    # A string, or a list of content parts ({"type": "text", "text": ...}, images, ...).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    # The same, under the names vLLM (`reasoning`) and gpt-oss's template (`thinking`) use.
    reasoning: str | None = None
    thinking: str | None = None


class JsonSchemaFormat(msgspec.Struct, omit_defaults=True, kw_only=True):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, omit_defaults=True, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Parameters shared by chat and text completions."""

    model: str
    max_tokens: NonNegInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: int | None = None
    min_p: Probability | None = None
    seed: int | None = None
    # `X | None = default` below: null is accepted and means the default (nulls_as_defaults).
    n: ChoiceCount | None = 1
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    min_tokens: NonNegInt | None = 0
    ignore_eos: bool | None = False
    user: str | None = None
    # Structured output, passed to engines that support it (vLLM's names for the guided_* ones).
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def __post_init__(self) -> None:
        nulls_as_defaults(self)


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: NonNegInt | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    # "none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = True
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None


# A completions prompt: text, texts, token ids, or lists of token ids. (msgspec takes one list
# type per union; the preprocessor checks that a list does not mix the three kinds.)
CompletionPrompt = str | list[str | int | list[int]]


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: CompletionPrompt
    echo: bool | None = False
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None


# ---------------------------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------------------------


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(msgspec.Struct):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None  # OpenAI's schema requires the key


class CompletionLogprobs(msgspec.Struct):
    """The legacy completions shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str  # JSON text


class ToolCallOut(msgspec.Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class FunctionCallDelta(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallChunk(msgspec.Struct, omit_defaults=True):
    """A streamed piece of a tool call; id, type and name come with its first piece."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ResponseMessage(msgspec.Struct):
    # The keys OpenAI always sends are always present (`content` is null beside tool calls,
    # `refusal` is null); `tool_calls` is left out when there are none: OpenAI's schema allows
    # an array or no key, not null.
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | msgspec.UnsetType = msgspec.UNSET


class ChatChoice(msgspec.Struct):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: Literal["chat.completion"] = "chat.completion"


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallChunk] | None = None


class ChatChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    # Left out of stream chunks (OpenAI's completion schema has no null usage); the final
    # response and a stream's usage chunk carry it.
    usage: Usage | msgspec.UnsetType = msgspec.UNSET
    object: Literal["text_completion"] = "text_completion"


class ModelObject(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "dynamo"
    object: Literal["model"] = "model"
    max_model_len: int | None = None


class ModelList(msgspec.Struct):
    data: list[ModelObject]
    object: Literal["list"] = "list"


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


# ---------------------------------------------------------------------------------------------
# utility endpoints (vLLM-compatible)
# ---------------------------------------------------------------------------------------------


class TokenizeRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Either `prompt`, or chat `messages` rendered through the model's chat template."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    documents: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class TokenizeResponse(msgspec.Struct):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    tokens: list[int]


class DetokenizeResponse(msgspec.Struct):
    prompt: str
