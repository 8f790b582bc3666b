"""Tool calls in generated text, turned into OpenAI `tool_calls`.

A model writes its calls as text in its own format; the parser named by `--tool-call-parser`
finds them in a whole output (`parse`) or while it streams (`feed`, then `finish`):

- `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number, with content
  around them (Qwen2.5, Hermes); an unclosed last tag runs to the end of the output.
- `llama3_json`: the whole output is `{"name": ..., "parameters"|"arguments": {...}}`, maybe after
  `<|python_tag|>`, several joined by `;`; only when it starts with `{` or the tag.
- `mistral`: content, then `[TOOL_CALLS]` and a JSON array of `{"name", "arguments"}` objects, or
  the newer `[TOOL_CALLS]name{args}` (also `name[ARGS]{args}`), repeated.
- `pythonic`: the whole output is a Python list of calls with literal keyword arguments,
  `[get_weather(city="Paris"), f(x=1)]` (Llama 3.2/4), read with `ast`, never evaluated.

Text that does not parse as calls stays content, as written: a malformed call never raises.
Whitespace-only content next to a call (the newline between `</tool_call>` and `<tool_call>`)
is the model's separator, not text for the user, and is dropped; other content is verbatim.

Streaming: text that may still turn into a call (a partial `<tool_call>` or `[TOOL_CALLS]`, the
leading `{`/`[` of a whole-output format) is held back until that is clear. Each call is emitted
whole, as one `ToolCallDelta` with id, name and all its arguments, once complete: at its closing
tag, or at `finish` for formats without one, since only a complete call is known to be valid (a
malformed one must come out as content). `parse` and streaming share their code, so however the
text is split, what streams is exactly what `parse` returns (ids aside).
"""

from __future__ import annotations

import abc
import ast
import json
import re
import secrets
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from dynamo_core.frontend.stop_strings import partial_match_length


class ToolCall(msgspec.Struct, kw_only=True):
    """One parsed call; `arguments` is the JSON text of the arguments object, as OpenAI sends it."""

    name: str
    arguments: str
    id: str = msgspec.field(default_factory=lambda: "call_" + secrets.token_hex(12))


class ParsedOutput(msgspec.Struct):
    """A whole output split into content ("" when none) and calls."""

    content: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)


class ToolCallDelta(msgspec.Struct, kw_only=True):
    """A streamed piece of call `index`; `id` and `name` are set on its first piece only."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class StreamDelta(msgspec.Struct):
    """What one streamed piece of text yields: content safe to show now, and call pieces."""

    content: str = ""
    tool_calls: list[ToolCallDelta] = msgspec.field(default_factory=list)


_Item = str | ToolCall  # an output is read as a sequence of content pieces and calls
_DECODER = json.JSONDecoder()
_WS = re.compile(r"\s*")
_CALL_KEYS = {"name", "arguments", "parameters", "id", "type"}
_CallsOf = Callable[[str], "list[ToolCall | None] | None"]  # reads calls; raises if malformed


def _make_call(name: Any, args: Any) -> ToolCall | None:
    """A call from a decoded name and arguments; None when they do not have a call's shape.
    Raises ValueError or TypeError (taken as malformed) for arguments with no JSON form."""
    if isinstance(args, str):  # some models write the arguments object as a JSON string
        args = json.loads(args)
    args = {} if args is None else args  # a call without arguments
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        return None
    return ToolCall(name=name, arguments=json.dumps(args, ensure_ascii=False, allow_nan=False))


def _call_from_object(obj: Any) -> ToolCall | None:
    """`{"name": ..., "arguments"|"parameters": {...}}` as a call; other keys mean it is data
    the model wrote (an answer in JSON), not a call."""
    if not isinstance(obj, dict) or not obj.keys() <= _CALL_KEYS:
        return None
    return _make_call(obj.get("name"), obj.get("arguments", obj.get("parameters")))


def _checked(calls_of: _CallsOf, text: str) -> list[ToolCall] | None:
    """The calls `calls_of` reads in `text`, or None when it is not only valid calls: it raised
    (bad JSON or Python, deep nesting, a set or inf from `ast`), found no calls, or a part that is
    not a call."""
    try:
        calls = calls_of(text)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None
    return calls if calls and all(calls) else None  # type: ignore[return-value]


class _Content:
    """Splits items into content and calls; whitespace-only content next to a call is dropped
    (held while the content since the last call is blank; gone if a call follows, or at the end
    if one came before). `parse` uses a fresh one, a stream keeps one across pieces."""

    def __init__(self) -> None:
        self._held = ""
        self._blank = True  # the content since the last call is all whitespace so far
        self._after_call = False

    def take(self, items: list[_Item], end: bool = False) -> tuple[str, list[ToolCall]]:
        parts: list[str] = []
        calls: list[ToolCall] = []
        for item in items:
            if isinstance(item, ToolCall):
                self._held, self._blank, self._after_call = "", True, True
                calls.append(item)
            elif not self._blank:
                parts.append(item)
            elif not item or item.isspace():
                self._held += item
            else:
                parts.append(self._held + item)
                self._held, self._blank = "", False
        if end:
            parts.append("" if self._after_call else self._held)
            self._held = ""
        return "".join(parts), calls


class ToolParser(abc.ABC):
    """Base of the parsers. An instance keeps the state of one streamed output: use a new one per
    response (and per choice); `parse` keeps no state and may be called any time."""

    def __init__(self) -> None:
        self._content = _Content()
        self._count = 0  # calls streamed so far: the next call's index

    def parse(self, text: str) -> ParsedOutput:
        """The whole output, split into content and calls."""
        return ParsedOutput(*_Content().take(self._items(text), end=True))

    @abc.abstractmethod
    def feed(self, delta: str) -> StreamDelta:
        """The next piece of streamed text; returns what can be shown now."""

    @abc.abstractmethod
    def finish(self) -> StreamDelta:
        """The end of the output: everything still held back, as content or calls."""

    @abc.abstractmethod
    def _items(self, text: str) -> list[_Item]:
        """The whole output as content pieces and calls, in order."""

    @abc.abstractmethod
    def _calls(self, text: str) -> list[ToolCall | None] | None:
        """The calls written in a call block, or the stripped whole output (may raise, see
        `_checked`); a None among them, or None, means it is not (only) calls."""

    def _emit(self, items: list[_Item], end: bool = False) -> StreamDelta:
        content, calls = self._content.take(items, end)
        deltas = [
            ToolCallDelta(index=self._count + i, id=c.id, name=c.name, arguments=c.arguments)
            for i, c in enumerate(calls)
        ]
        self._count += len(calls)
        return StreamDelta(content, deltas)


class _TaggedParser(ToolParser):
    """Calls start at an opening marker, with content around them; they end at a closing marker,
    or, without one (or when it never comes), at the end of the output."""

    open: ClassVar[str]
    close: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._buf = ""  # text not yet emitted: a partial marker, or an open call
        self._inside = False  # `_buf` starts with `open`

    def _block(self, raw: str, body: str) -> list[_Item]:
        return list(_checked(self._calls, body) or [raw])

    def _items(self, text: str) -> list[_Item]:
        fresh = type(self)()  # the stream's own scanning, so parsing and streaming agree
        return fresh._scan(text) + fresh._rest()

    def feed(self, delta: str) -> StreamDelta:
        return self._emit(self._scan(delta))

    def finish(self) -> StreamDelta:
        return self._emit(self._rest(), end=True)

    def _scan(self, delta: str) -> list[_Item]:
        """Add text; return what it settles: content before a marker, calls once closed."""
        self._buf += delta
        items: list[_Item] = []
        while True:
            if not self._inside:
                start = self._buf.find(self.open)
                if start == -1:  # hold back what may be the beginning of a marker
                    keep = len(self._buf) - partial_match_length(self._buf, (self.open,))
                    items.append(self._buf[:keep])
                    self._buf = self._buf[keep:]
                    return items
                items.append(self._buf[:start])
                self._buf, self._inside = self._buf[start:], True
            if not self.close:
                return items
            end = self._buf.find(self.close, len(self.open))
            if end == -1:
                return items
            stop = end + len(self.close)
            items += self._block(self._buf[:stop], self._buf[len(self.open) : end])
            self._buf, self._inside = self._buf[stop:], False

    def _rest(self) -> list[_Item]:
        """At the end: a call still open runs to the end of the output."""
        buf, inside, self._buf, self._inside = self._buf, self._inside, "", False
        return self._block(buf, buf[len(self.open) :]) if inside else [buf]


class HermesToolParser(_TaggedParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, with content around."""

    open = "<tool_call>"
    close = "</tool_call>"

    def _calls(self, body: str) -> list[ToolCall | None]:
        return [_call_from_object(json.loads(body))]


class MistralToolParser(_TaggedParser):
    """Content, then `[TOOL_CALLS]` and the calls up to the end of the output."""

    open = "[TOOL_CALLS]"
    _NAME = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*(?:\[ARGS\]\s*)?")

    def _calls(self, body: str) -> list[ToolCall | None] | None:
        calls: list[ToolCall | None] = []
        for part in body.split(self.open):  # the newer form repeats the marker per call
            part = part.strip()
            if part.startswith("["):  # [{"name": ..., "arguments": {...}}, ...]
                array, end = _DECODER.raw_decode(part)
                if end != len(part) or not isinstance(array, list):
                    return None
                calls += map(_call_from_object, array)
                continue
            pos = 0
            while pos < len(part):  # name{...}name{...}
                if (name := self._NAME.match(part, pos)) is None:
                    return None
                args, pos = _DECODER.raw_decode(part, name.end())
                calls.append(_make_call(name[1], args) if isinstance(args, dict) else None)
                pos = _WS.match(part, pos).end()
        return calls


class _WholeOutputParser(ToolParser):
    """The output is either all calls or all content, told apart by how it starts; there is no
    closing marker, so calls are known only at the end."""

    def __init__(self) -> None:
        super().__init__()
        self._held: list[str] = []
        self._calls_mode: bool | None = None  # None: cannot tell yet from what came so far

    @abc.abstractmethod
    def _starts(self, head: str) -> bool | None:
        """Whether output whose stripped beginning is `head` may be calls (None: cannot tell
        yet). Once True or False for some `head`, the same for every longer one."""

    def _items(self, text: str) -> list[_Item]:
        calls = _checked(self._calls, text.strip()) if self._starts(text.lstrip()) else None
        return list(calls or [text])

    def feed(self, delta: str) -> StreamDelta:
        self._held.append(delta)
        if self._calls_mode is None:
            self._calls_mode = self._starts("".join(self._held).lstrip())
        if self._calls_mode is False:
            held, self._held = self._held, []
            return self._emit(held)
        return StreamDelta()

    def finish(self) -> StreamDelta:
        held, self._held = "".join(self._held), []
        return self._emit(self._items(held), end=True)


class Llama3JsonToolParser(_WholeOutputParser):
    """`{"name": ..., "parameters": {...}}`, maybe after `<|python_tag|>`, several joined by `;`."""

    TAG = "<|python_tag|>"

    def _starts(self, head: str) -> bool | None:
        if head.startswith(("{", self.TAG)):
            return True
        return None if self.TAG.startswith(head) else False

    def _calls(self, text: str) -> list[ToolCall | None] | None:
        calls = []
        pos = 0
        while pos < len(text):
            pos = _WS.match(text, pos).end()
            if text.startswith(self.TAG, pos):
                pos = _WS.match(text, pos + len(self.TAG)).end()
            obj, pos = _DECODER.raw_decode(text, pos)  # a `;` in a string stays in the string
            calls.append(_call_from_object(obj))
            pos = _WS.match(text, pos).end()
            if pos < len(text):
                if text[pos] != ";":
                    return None
                pos = _WS.match(text, pos + 1).end()
        return calls


class PythonicToolParser(_WholeOutputParser):
    """`[f(a=1, b="x"), g()]`: a list of calls whose keyword arguments are Python literals."""

    def _starts(self, head: str) -> bool | None:
        # Deciding at the first character after `[` lets `[1, 2]` or `[ ]` stream as content.
        if not head:
            return None
        if head[0] != "[":
            return False
        rest = head[1:].lstrip()
        return rest[0].isidentifier() if rest else None

    def _calls(self, text: str) -> list[ToolCall | None] | None:
        tree = ast.parse(text, mode="eval").body
        return [self._call(node) for node in tree.elts] if isinstance(tree, ast.List) else None

    @staticmethod
    def _call(node: ast.expr) -> ToolCall | None:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            return None
        if any(kw.arg is None for kw in node.keywords):  # **kwargs
            return None
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        return _make_call(node.func.id, args)


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
}


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser class for a `--tool-call-parser` name."""
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        valid = ", ".join(TOOL_PARSERS)
        raise ValueError(f"unknown tool call parser {name!r}; valid names: {valid}") from None


def calls_from_json(text: str, function: str | None = None) -> list[ToolCall] | None:
    """Calls in the JSON that `tool_choice` makes an engine write (structured.py): with a
    `function` name, the whole text is that function's arguments object; without, a list of
    `{"name", "parameters"}` objects. None when the text is not that."""
    try:
        value = json.loads(text)
        if function is not None:
            call = _make_call(function, value)
            return [call] if call is not None else None
        if not isinstance(value, list) or not value:
            return None
        calls = [_call_from_object(item) for item in value]
    except (ValueError, TypeError, RecursionError):
        return None
    return calls if all(c is not None for c in calls) else None  # type: ignore[return-value]
