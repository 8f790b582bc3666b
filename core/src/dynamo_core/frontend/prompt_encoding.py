"""Prompt rendering and encoding: chat messages through the chat template to token ids, and
completions prompts (text or token ids) to token ids, with the client's mistakes as 400s.

The one implementation of both, used on the frontend's event loop (the preprocessor), in its
threads, and in the prompt pool's processes (`prompt_pool`), so that token ids and errors are
the same wherever a prompt is encoded. It reads only a model's card and tokenizer
(`PromptModel`), which the pool's processes rebuild from the card alone.
"""

from __future__ import annotations

from typing import Protocol, Union

import msgspec

from dynamo_core.frontend.chat_template import ChatTemplateError, render_chat_template
from dynamo_core.frontend.errors import BadRequestError
from dynamo_core.protocols.discovery import ModelCard
from dynamo_core.protocols.openai import ChatCompletionRequest, CompletionPrompt, TokenizeRequest
from dynamo_core.tokenizer import TokenizerBundle

ChatTemplateOptions = Union[ChatCompletionRequest, TokenizeRequest]  # both carry the template options


class PromptModel(Protocol):
    """What encoding reads of a served model (a `ServedModel`, or the pool's copy of one)."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def tokenizer(self) -> TokenizerBundle: ...


def render_and_encode_messages(bundle: TokenizerBundle, req: ChatTemplateOptions, messages: list[dict]) -> list[int]:
    """The chat template over `messages` (the request's, as plain data), with the request's
    tools, documents and template options, tokenized; a template error is the client's 400.
    Chat requests and `/tokenize` with messages go through here alike."""
    try:
        prompt = render_chat_template(
            bundle,
            messages,
            tools=req.tools,
            documents=req.documents,
            add_generation_prompt=req.add_generation_prompt and not req.continue_final_message,
            continue_final_message=req.continue_final_message,
            template_kwargs=req.chat_template_kwargs,
        )
    except ChatTemplateError as exc:
        raise BadRequestError(str(exc), param="messages") from exc
    # The template already placed BOS where the model wants it.
    return bundle.encode_prompt(prompt)


def render_and_encode_chat(model: PromptModel, req: ChatCompletionRequest) -> tuple[list[int], list[int] | None]:
    """A chat request's prompt token ids, and its last message's (for engines that want them)."""
    bundle = model.tokenizer
    messages = [msgspec.to_builtins(m) for m in req.messages]
    token_ids = render_and_encode_messages(bundle, req, messages)
    last_ids = None
    if model.card.wants_last_message_tokens:
        content = messages[-1].get("content") or ""
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
        last_ids = bundle.encode(content, add_special_tokens=False)
    return token_ids, last_ids


def tokenize_for_endpoint(model: PromptModel, req: TokenizeRequest) -> list[int]:
    """`POST /tokenize`: a prompt, or chat messages through the same template path as chat."""
    bundle = model.tokenizer
    if (req.prompt is None) == (req.messages is None):
        raise BadRequestError("give exactly one of 'prompt' and 'messages'", param="prompt")
    if req.prompt is not None:
        return bundle.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    if not req.messages:
        raise BadRequestError("'messages' must contain at least one message", param="messages")
    return render_and_encode_messages(bundle, req, [msgspec.to_builtins(m) for m in req.messages])


def encode_completion_prompts(model: PromptModel, prompt: CompletionPrompt) -> list[tuple[list[int], str | None]]:
    """Each prompt as (token ids, its text when given as text)."""
    vocab = model.tokenizer.vocab_size
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    elif all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        prompts = list(prompt)
    else:
        raise BadRequestError(
            "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            param="prompt",
        )
    if not prompts:
        raise BadRequestError("'prompt' must not be empty", param="prompt")
    out = []
    for item in prompts:
        if isinstance(item, str):
            out.append((model.tokenizer.encode(item, add_special_tokens=True), item))
        else:
            if not item:
                raise BadRequestError("a token-id prompt must not be empty", param="prompt")
            if any(t < 0 or t >= vocab for t in item):
                raise BadRequestError(f"token ids in 'prompt' must lie in [0, {vocab})", param="prompt")
            out.append((list(item), None))
    return out
