"""Chat templates rendered as `transformers`' `apply_chat_template` renders them.

Same Jinja setup: a sandboxed, immutable environment with `trim_blocks`, `lstrip_blocks` and
loop controls; a `tojson` filter that keeps non-ASCII text; `raise_exception(...)` and
`strftime_now(...)` globals; the tokenizer's special tokens as variables; and
`continue_final_message` cutting the rendering right after the last message's content.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dynamo_core.tokenizer import TokenizerBundle


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (the template refused them, or they are malformed)."""


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc


def flatten_content(messages: list[dict]) -> list[dict]:
    """Text-only models: join a message's text parts with newlines; refuse other parts."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text", "")))
                else:
                    raise ChatTemplateError(f"this model accepts text only; message content part of type {kind!r} is not supported")
            message = {**message, "content": "\n".join(texts)}
        elif content is None and "tool_calls" not in message:
            message = {**message, "content": ""}
        out.append(message)
    return out


def render_chat_template(
    bundle: TokenizerBundle,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
    template: str | None = None,
) -> str:
    source = template or bundle.chat_template
    if not source:
        raise ChatTemplateError("this model has no chat template; use /v1/completions or start the worker with a template")
    messages = flatten_content(messages)
    variables: dict[str, Any] = dict(template_kwargs or {})
    variables.update(
        messages=messages,
        tools=tools,
        documents=documents,
        add_generation_prompt=add_generation_prompt,
        bos_token=bundle.bos_token or "",
        eos_token=bundle.eos_token or "",
    )
    try:
        rendered = compile_template(source).render(**variables)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from exc
    except (TypeError, KeyError, AttributeError, IndexError) as exc:
        raise ChatTemplateError(f"the chat template could not render these messages: {exc}") from exc
    if continue_final_message:
        final = (messages[-1].get("content") or "").strip() if messages else ""
        if not final or final not in rendered:
            raise ChatTemplateError("continue_final_message: the final message does not appear in the rendered prompt")
        rendered = rendered[: rendered.rindex(final) + len(final)]
    return rendered
