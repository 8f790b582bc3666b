"""OpenAI request -> `PreprocessedRequest`s: chat template, tokenization, limits, sampling.

One `PreprocessedRequest` per choice: a chat request with ``n=3`` becomes three, a
completions request with two prompts and ``n=2`` becomes four (indexed prompt-major, as
OpenAI numbers them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar


from dynamo_core.frontend.errors import BadRequestError
from dynamo_core.frontend.prompt_encoding import encode_completion_prompts, render_and_encode_chat
from dynamo_core.frontend.prompt_pool import PromptPool
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.frontend.stages import PreparedChoice
from dynamo_core.frontend.structured import guided_decoding
from dynamo_core.protocols.engine import (
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo_core.protocols.openai import ChatCompletionRequest, CompletionRequest, SamplingFields

# Without a prompt pool, prompts longer than this (characters) are templated and tokenized in
# a thread, which helps little (`tokenizers` holds the GIL while it encodes). With a pool
# (`--preprocess-workers`), prompts longer than its `min_chars` (`--preprocess-min-chars`) go
# to its processes. Shorter ones stay on the loop, where they take a few ms at most.
OFF_LOOP_PROMPT_CHARS = 8192


T = TypeVar("T")


async def _where_it_pays(
    model: ServedModel, pool: PromptPool | None, chars: int, pooled: Callable[[PromptPool], Awaitable[T]],
    here: Callable[[], T],
) -> T:
    """Template and encode a prompt of `chars` characters in the prompt pool, a thread, or on
    the loop (see OFF_LOOP_PROMPT_CHARS). The pool serves only models whose tokenizer another
    process can load (`tokenizer_source`)."""
    if model.tokenizer_source is None:
        pool = None
    if pool is not None and chars > pool.min_chars:
        return await pooled(pool)
    if pool is None and chars > OFF_LOOP_PROMPT_CHARS:
        return await asyncio.to_thread(here)
    return here()


def _stop_strings(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 4 or any(not s for s in stops):
        raise BadRequestError("'stop' takes up to 4 non-empty strings", param="stop")
    return stops


def _max_tokens(model: ServedModel, prompt_len: int, requested: int | None, param: str) -> int:
    context = model.card.context_length
    if prompt_len >= context:
        raise BadRequestError(
            f"This model's maximum context length is {context} tokens. However, your prompt has "
            f"{prompt_len} tokens. Please reduce the length of the prompt.",
            param="messages" if param == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return context - prompt_len
    if prompt_len + requested > context:
        raise BadRequestError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
            f"completion). Please reduce the prompt or the completion length.",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def _sampling(req: SamplingFields, seed_offset: int) -> SamplingOptions:
    return SamplingOptions(
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        # Each of n choices gets its own seed, or they would all be the same sample.
        seed=None if req.seed is None else req.seed + seed_offset,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
    )


def _stop_conditions(model: ServedModel, req: SamplingFields, max_tokens: int) -> StopConditions:
    if req.min_tokens > max_tokens:
        raise BadRequestError("'min_tokens' must not exceed 'max_tokens'", param="min_tokens")
    return StopConditions(
        max_tokens=max_tokens,
        stop_token_ids=[] if req.ignore_eos else list(model.tokenizer.eos_token_ids),
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
    )


def _chat_prompt_chars(req: ChatCompletionRequest) -> int:
    """What the template will render, roughly: message texts (for a caller without the body)."""
    chars = 0
    for m in req.messages:
        if isinstance(m.content, str):
            chars += len(m.content)
        elif m.content:
            chars += sum(len(part.get("text") or "") if isinstance(part, dict) else 256 for part in m.content)
    return chars


def _completion_prompt_chars(prompt) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(item) for item in prompt if isinstance(item, str))  # token-id prompts need no encoding


async def prepare_chat(
    model: ServedModel, req: ChatCompletionRequest, request_id: str, pool: PromptPool | None = None,
    tool_guided: GuidedDecoding | None = None, body_chars: int | None = None,
) -> list[PreparedChoice]:
    """`pool`: the frontend's prompt pool, if it has one. `tool_guided`: the constraint that `tool_choice` puts on the output (see structured.py).
    `body_chars`: the request body's size, the measure of the template's work (tools and
    documents render too) that decides where it is done; else the messages' text is counted."""
    if not req.messages:
        raise BadRequestError("'messages' must contain at least one message", param="messages")
    guided = guided_decoding(req, model.card)
    if guided is not None and tool_guided is not None:
        raise BadRequestError("'tool_choice' cannot be combined with another output constraint", param="tool_choice")
    guided = guided or tool_guided
    _stop_strings(req.stop)  # validate before the expensive part
    token_ids, last_ids = await _where_it_pays(
        model, pool, body_chars if body_chars is not None else _chat_prompt_chars(req),
        lambda pool: pool.render_and_encode_chat(model, req), lambda: render_and_encode_chat(model, req),
    )
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = _max_tokens(model, len(token_ids), requested, param)
    stop = _stop_conditions(model, req, max_tokens)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    choices = []
    for i in range(req.n):
        choices.append(
            PreparedChoice(
                index=i,
                prompt_token_ids=token_ids,
                request=PreprocessedRequest(
                    request_id=request_id if req.n == 1 else f"{request_id}-{i}",
                    model=model.name,
                    token_ids=token_ids,
                    stop=stop,
                    sampling=_sampling(req, i),
                    output=OutputOptions(logprobs=logprobs),
                    guided=guided,
                    last_message_token_ids=last_ids,
                ),
            )
        )
    return choices


async def prepare_completion(
    model: ServedModel, req: CompletionRequest, request_id: str, pool: PromptPool | None = None
) -> list[PreparedChoice]:
    _stop_strings(req.stop)
    guided = guided_decoding(req, model.card)
    prompts = await _where_it_pays(
        model, pool, _completion_prompt_chars(req.prompt),
        lambda pool: pool.encode_completion_prompts(model, req.prompt),
        lambda: encode_completion_prompts(model, req.prompt),
    )
    choices: list[PreparedChoice] = []
    for p, (token_ids, text) in enumerate(prompts):
        max_tokens = _max_tokens(model, len(token_ids), req.max_tokens if req.max_tokens is not None else 16, "max_tokens")
        stop = _stop_conditions(model, req, max_tokens)
        for i in range(req.n):
            index = p * req.n + i
            choices.append(
                PreparedChoice(
                    index=index,
                    prompt_token_ids=token_ids,
                    prompt_text=text,
                    request=PreprocessedRequest(
                        request_id=request_id if len(prompts) * req.n == 1 else f"{request_id}-{index}",
                        model=model.name,
                        token_ids=token_ids,
                        stop=stop,
                        sampling=_sampling(req, i),
                        output=OutputOptions(logprobs=req.logprobs),
                        guided=guided,
                            last_message_token_ids=token_ids if model.card.wants_last_message_tokens else None,
                    ),
                )
            )
    return choices
