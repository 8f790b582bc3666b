"""Chat templates, rendered as `transformers`' `apply_chat_template` renders them.

A model's template is written for `transformers`, so the same prompt must come out here:

- the same Jinja setup: an immutable sandbox with `trim_blocks`, `lstrip_blocks` and loop
  controls; a `tojson` filter that keeps non-ASCII text and takes `indent`, `separators` and
  `sort_keys`; the globals `raise_exception(message)` and `strftime_now(format)`; and the
  `{% generation %}` block (which marks assistant text for training masks) as a plain block;
- the same variables: `messages`, `tools` (JSON schemas, passed as given, so OpenAI's
  `{"type": "function", "function": {...}}` entries reach the template unchanged), `documents`,
  `add_generation_prompt`, the tokenizer's `bos_token`, `eos_token` and other named special
  tokens (`unk_token`, `pad_token`, ...), then the request's
  `chat_template_kwargs` (`enable_thinking`, ...), which may override the special tokens;
- the same `continue_final_message`: the final message is rendered with a marker after its
  content and the prompt is cut at the marker, so the model continues that message.

Messages are first brought to the shape text-only models' templates expect, as vLLM does: a
list of content parts becomes its text parts joined by newlines (an image or audio part is
refused: these models read text only), missing content becomes "", and tool-call arguments
sent as a JSON string become the object templates index into. As in `transformers`, other keys
set to null are left out, and reasoning (`reasoning_content`, `thinking` or `reasoning`) is
given to the template under the first two names.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2
import jinja2.nodes
import jinja2.parser
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from dynamo_core.tokenizer import TokenizerBundle


class ChatTemplateError(ValueError):
    """The messages cannot be rendered: they are malformed, or the template failed or refused
    them. The message is fit for the client (it becomes an HTTP 400)."""


class TemplateError(ChatTemplateError):
    """The template itself refused the messages through `raise_exception(message)`."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnsupportedContentError(ChatTemplateError):
    """A message holds a content part the model cannot read (an image, audio, ...)."""


# Appended to the final message for `continue_final_message`, the marker `transformers` uses:
# where it lands in the rendered prompt is where the final message's content ends.
_CONTINUE_MARKER = "CONTINUE_FINAL_MESSAGE_TAG "

# Arguments of the rendering itself; `chat_template_kwargs` may not replace them.
_RESERVED_VARIABLES = frozenset({"messages", "tools", "documents", "add_generation_prompt", "continue_final_message"})

# Names a message's reasoning comes under (vLLM's `reasoning` among them), first preferred.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

# Content parts that carry text, and the key that holds it (OpenAI Chat, OpenAI Responses).
_TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}


# ---------------------------------------------------------------------------------------------
# the Jinja environment
# ---------------------------------------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise TemplateError(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own `tojson` escapes HTML characters and takes only `indent`; templates are
    # written against this one.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` renders its body unchanged. `transformers`
    records where such blocks fall to build assistant-token masks for training; serving only
    needs the templates that use it to compile."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template of `source`, compiled once per distinct source. Raises
    `ChatTemplateError` when it does not compile."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"the model's chat template does not compile (line {exc.lineno}): {exc.message}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------------


def flatten_content(content: Any) -> str:
    """A message's content as one string: a string as is, None as "", a list of parts as its
    text parts joined by newlines (vLLM's rule for text-only models). Raises
    `UnsupportedContentError` for any other part."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ChatTemplateError(f"message content must be a string or a list of parts, not {type(content).__name__}")
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        key = _TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if key is None:
            raise UnsupportedContentError(
                f"this model accepts text only; content parts of type {kind!r} are not supported"
            )
        text = part.get(key)
        if not isinstance(text, str):
            raise ChatTemplateError(f"a content part of type {kind!r} needs a string {key!r}")
        texts.append(text)
    return "\n".join(texts)


def _tool_calls(calls: Any) -> Any:
    """Tool calls with their `function.arguments` as objects: OpenAI clients send a JSON
    string, templates index into a mapping (or `tojson` it, which would quote a string)."""
    if not isinstance(calls, list):
        return calls
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            out.append(call)
            continue
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            if arguments.strip():
                try:
                    arguments = json.loads(arguments)
                except ValueError as exc:
                    raise ChatTemplateError(
                        f"tool call {function.get('name')!r}: 'arguments' is not valid JSON ({exc})"
                    ) from exc
            else:
                arguments = {}
        elif arguments is None:
            arguments = {}
        out.append({**call, "function": {**function, "arguments": arguments}})
    return out


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `messages` in the shape chat templates expect (the caller's stay untouched):
    content flattened to a string, tool-call arguments parsed, null keys dropped, reasoning
    aliased. Raises `ChatTemplateError`."""
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatTemplateError(f"messages[{index}] must be an object with a string 'role'")
        # Keys set to null are left out, as transformers leaves them out: clients send back
        # `"tool_calls": null` and the like, and templates test `'tool_calls' in message` or
        # `message.tool_calls is defined`. Content alone stays, as "" (vLLM's rule).
        normalized = {key: value for key, value in message.items() if value is not None}
        normalized["content"] = flatten_content(message.get("content"))
        if "tool_calls" in normalized:
            normalized["tool_calls"] = _tool_calls(normalized["tool_calls"])
        out.append(_alias_reasoning(normalized))
    return out


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    """As transformers does: a message's reasoning, under any of its names, also fills
    `reasoning_content` (which most templates read) and `thinking` (which gpt-oss's reads)."""
    reasoning = next((message[key] for key in _REASONING_FIELDS if key in message), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _check_objects(items: list[Any] | None, what: str) -> None:
    if items is None:
        return
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ChatTemplateError(f"'{what}' must be a list of JSON objects")


def _cut_after_final_message(rendered: str, final_content: str) -> str:
    """The prompt up to the end of the final message's content (marked by `_CONTINUE_MARKER`).
    A template that trims content also trims the marker's trailing space; then the content's
    own trailing whitespace went too, and so does it here."""
    marker = _CONTINUE_MARKER.strip()
    if final_content.strip() not in rendered or marker not in rendered:
        raise ChatTemplateError(
            "continue_final_message: the chat template drops part of the final message, so it cannot be continued"
        )
    at = rendered.rindex(marker)
    if rendered.startswith(_CONTINUE_MARKER, at):
        return rendered[:at]
    return rendered[:at].rstrip()


def render_chat_template(
    bundle: TokenizerBundle,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
    template: str | None = None,
) -> str:
    """The prompt text for `messages`, rendered with `template` or else the bundle's template.

    `tools` and `documents` reach the template as given (None stays None). `template_kwargs`
    (a request's `chat_template_kwargs`) become template variables and may override
    `bos_token`/`eos_token`, not the arguments above. `continue_final_message` (which excludes
    `add_generation_prompt`) ends the prompt right after the final message's content.

    Raises `TemplateError` when the template calls `raise_exception`, `UnsupportedContentError`
    for non-text content parts, and `ChatTemplateError` for every other reason the messages
    cannot be rendered (no template, malformed messages, a failing template).
    """
    source = template
    if source is None:
        source = bundle.tool_chat_template if tools and bundle.tool_chat_template else bundle.chat_template
    if not source:
        raise ChatTemplateError("this model has no chat template; use /v1/completions, or give the model one")
    if add_generation_prompt and continue_final_message:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt exclude each other: the first continues the "
            "final message, the second starts a new assistant message"
        )
    _check_objects(tools, "tools")
    _check_objects(documents, "documents")
    kwargs = dict(template_kwargs or {})
    if clash := sorted(_RESERVED_VARIABLES & kwargs.keys()):
        raise ChatTemplateError(f"chat_template_kwargs may not set {', '.join(clash)}; use the request's own fields")

    chat = normalize_messages(messages)
    final_content = ""
    if continue_final_message:
        if not chat:
            raise ChatTemplateError("continue_final_message needs at least one message")
        final_content = chat[-1]["content"]
        chat[-1]["content"] = final_content + _CONTINUE_MARKER

    variables: dict[str, Any] = dict(bundle.template_tokens)
    if bundle.bos_token is not None:
        variables["bos_token"] = bundle.bos_token
    if bundle.eos_token is not None:
        variables["eos_token"] = bundle.eos_token
    variables.update(kwargs)

    compiled = compile_template(source)
    try:
        rendered = compiled.render(
            messages=chat,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as exc:
        # A template doing arithmetic or string concatenation on what these messages hold
        # (None + "text", say): the request does not fit the template.
        raise ChatTemplateError(f"the chat template cannot render these messages: {exc}") from exc
    if continue_final_message:
        rendered = _cut_after_final_message(rendered, final_content)
    return rendered
