"""Tool-call parsers: whole outputs, and the same outputs streamed in any pieces."""

from __future__ import annotations

import json
import random
import re

import pytest

from dynamo_core.frontend.tool_parsers import (
    TOOL_PARSERS,
    ParsedOutput,
    StreamDelta,
    ToolCall,
    get_tool_parser,
)

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TIME = '{"name": "get_time", "arguments": {"tz": "UTC", "fmt": "a; b}"}}'

# parser -> (output, expected content, expected calls as (name, arguments object))
CASES: dict[str, list[tuple[str, str, list[tuple[str, dict]]]]] = {
    "hermes": [
        (f"<tool_call>\n{WEATHER}\n</tool_call>", "", [("get_weather", {"city": "Paris"})]),
        (
            f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>\n",
            "",
            [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC", "fmt": "a; b}"})],
        ),
        (
            f"Let me check.\n<tool_call>{WEATHER}</tool_call>\nDone.",
            "Let me check.\n\nDone.",
            [("get_weather", {"city": "Paris"})],
        ),
        ("Sure <tool_call>{not json}</tool_call> ok", "Sure <tool_call>{not json}</tool_call> ok", []),
        (
            f"<tool_call>{{bad</tool_call>\n<tool_call>{WEATHER}</tool_call>",
            "<tool_call>{bad</tool_call>\n",
            [("get_weather", {"city": "Paris"})],
        ),
        ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
        (f"<tool_call>\n{WEATHER}\n", "", [("get_weather", {"city": "Paris"})]),  # unclosed, at end
        ('<tool_call>{"name": "x"', '<tool_call>{"name": "x"', []),
        (
            '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>',
            "",
            [("f", {"x": 1})],
        ),
        ("a < b, <tool and </tool_call> <tool_cal", "a < b, <tool and </tool_call> <tool_cal", []),
        ("  \n", "  \n", []),
    ],
    "llama3_json": [
        (
            '{"name": "get_weather", "parameters": {"city": "Paris"}}',
            "",
            [("get_weather", {"city": "Paris"})],
        ),
        ('<|python_tag|>{"name": "f", "arguments": {"x": 1}}', "", [("f", {"x": 1})]),
        (
            '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"y": [1, 2]}};',
            "",
            [("a", {}), ("b", {"y": [1, 2]})],
        ),
        (f" \n{TIME}\n", "", [("get_time", {"tz": "UTC", "fmt": "a; b}"})]),
        (f"The call is {WEATHER}", f"The call is {WEATHER}", []),
        ('{"name": "a", "parameters": {}', '{"name": "a", "parameters": {}', []),
        ('{"answer": 42, "name": "x"}', '{"answer": 42, "name": "x"}', []),
        ('{"name": "a"} and more', '{"name": "a"} and more', []),
        ("<|python", "<|python", []),
        ("<|pytho and more", "<|pytho and more", []),
    ],
    "mistral": [
        (f"[TOOL_CALLS][{WEATHER}]", "", [("get_weather", {"city": "Paris"})]),
        (
            f"[TOOL_CALLS] [{WEATHER}, {TIME}]",
            "",
            [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC", "fmt": "a; b}"})],
        ),
        (f"Sure.\n[TOOL_CALLS][{WEATHER}]\n", "Sure.\n", [("get_weather", {"city": "Paris"})]),
        (
            '[TOOL_CALLS]get_weather{"city": "Paris"}[TOOL_CALLS]get_time{}',
            "",
            [("get_weather", {"city": "Paris"}), ("get_time", {})],
        ),
        ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "", [("get_weather", {"city": "Paris"})]),
        (
            'Hi [TOOL_CALLS][{"name": "a", "arguments": {]',
            'Hi [TOOL_CALLS][{"name": "a", "arguments": {]',
            [],
        ),
        ("[TOOL_CALLS]", "[TOOL_CALLS]", []),
        ("[TOOL_CALLS]get_weather{} trailing", "[TOOL_CALLS]get_weather{} trailing", []),
        ("[1, 2] is a list [TOOL", "[1, 2] is a list [TOOL", []),
    ],
    "pythonic": [
        ('[get_weather(city="Paris", unit="c")]', "", [("get_weather", {"city": "Paris", "unit": "c"})]),
        (
            '[get_weather(city="Paris"), get_time(tz=None, opts={"a": [1, 2.5, True]}, t=(1,))]',
            "",
            [
                ("get_weather", {"city": "Paris"}),
                ("get_time", {"tz": None, "opts": {"a": [1, 2.5, True]}, "t": [1]}),
            ],
        ),
        ("\n [f()] \n", "", [("f", {})]),
        ("Here it is: [f(x=1)]", "Here it is: [f(x=1)]", []),
        ("[f(x=1), g(", "[f(x=1), g(", []),
        ("[f(x=y)]", "[f(x=y)]", []),  # not a literal
        ("[f(1)]", "[f(1)]", []),  # positional
        ("[f(x={1, 2})]", "[f(x={1, 2})]", []),  # a set has no JSON form
        ("[1, 2, 3]", "[1, 2, 3]", []),
        ("[see the docs](http://x)", "[see the docs](http://x)", []),
        ("[]", "[]", []),
    ],
}
ALL = [(name, *case) for name, cases in CASES.items() for case in cases]
IDS = [f"{name}-{i}" for name, cases in CASES.items() for i in range(len(cases))]


def calls_of(output: ParsedOutput) -> list[tuple[str, dict]]:
    return [(call.name, json.loads(call.arguments)) for call in output.tool_calls]


def named(output: ParsedOutput) -> list[tuple[str, str]]:
    """The calls without their ids, which differ from run to run."""
    return [(call.name, call.arguments) for call in output.tool_calls]


def chunks(text: str, how: str) -> list[str]:
    """The text in pieces: whole, one character at a time, or in seeded random sizes."""
    if how == "whole":
        return [text]
    if how == "chars":
        return list(text)
    rng = random.Random(int(how.removeprefix("random")))
    pieces, pos = [], 0
    while pos < len(text):
        size = rng.randint(1, 7)
        pieces.append(text[pos : pos + size])
        pos += size
    return pieces


def stream(name: str, pieces: list[str]) -> tuple[ParsedOutput, list[StreamDelta]]:
    """Feed the pieces, then finish; the deltas put together as a ParsedOutput."""
    parser = get_tool_parser(name)()
    deltas = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    calls: dict[int, ToolCall] = {}
    for delta in deltas:
        for part in delta.tool_calls:
            if part.id is not None:
                assert part.index == len(calls) and part.name
                calls[part.index] = ToolCall(id=part.id, name=part.name, arguments=part.arguments)
            else:
                assert part.name is None
                calls[part.index].arguments += part.arguments
    content = "".join(delta.content for delta in deltas)
    return ParsedOutput(content=content, tool_calls=list(calls.values())), deltas


@pytest.mark.parametrize(("name", "text", "content", "calls"), ALL, ids=IDS)
def test_parse(name: str, text: str, content: str, calls: list[tuple[str, dict]]) -> None:
    out = get_tool_parser(name)().parse(text)
    assert out.content == content
    assert calls_of(out) == calls
    if not calls:
        assert out.content == text  # malformed or no calls: the text, unchanged


@pytest.mark.parametrize("how", ["whole", "chars", "random1", "random2", "random3"])
@pytest.mark.parametrize(("name", "text", "content", "calls"), ALL, ids=IDS)
def test_stream_matches_parse(name: str, text: str, content: str, calls: list, how: str) -> None:
    streamed, _ = stream(name, chunks(text, how))
    parsed = get_tool_parser(name)().parse(text)
    assert streamed.content == parsed.content == content
    assert named(streamed) == named(parsed)


def test_unknown_parser_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="nope") as err:
        get_tool_parser("nope")
    for name in ("hermes", "llama3_json", "mistral", "pythonic"):
        assert name in str(err.value)
    assert set(TOOL_PARSERS) == {"hermes", "llama3_json", "mistral", "pythonic"}


def test_call_ids_are_unique_and_shaped_like_openai() -> None:
    text = f"<tool_call>{WEATHER}</tool_call><tool_call>{WEATHER}</tool_call>"
    ids = [call.id for call in get_tool_parser("hermes")().parse(text).tool_calls]
    ids += [call.id for call in get_tool_parser("hermes")().parse(text).tool_calls]
    assert len(set(ids)) == 4
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)


def test_arguments_are_json_text_keeping_non_ascii() -> None:
    out = get_tool_parser("pythonic")().parse('[f(city="Zürich", n=-1.5)]')
    assert out.tool_calls[0].arguments == '{"city": "Zürich", "n": -1.5}'


def test_hermes_holds_back_a_partial_tag_only_until_it_is_clear() -> None:
    parser = get_tool_parser("hermes")()
    assert parser.feed("Hi <tool").content == "Hi "
    assert parser.feed("box> x").content == "<toolbox> x"
    assert parser.feed(" <tool_c").content == " "
    assert parser.feed("all>{").content == ""
    assert parser.finish().content == "<tool_call>{"


def test_hermes_streams_each_call_at_its_closing_tag() -> None:
    parser = get_tool_parser("hermes")()
    first = parser.feed(f"<tool_call>\n{WEATHER}\n</tool_")
    assert first.tool_calls == [] and first.content == ""
    done = parser.feed("call>\n<tool_call>")
    assert [(d.index, d.name, json.loads(d.arguments)) for d in done.tool_calls] == [
        (0, "get_weather", {"city": "Paris"})
    ]
    assert done.tool_calls[0].id.startswith("call_")
    second = parser.feed(f"{TIME}</tool_call>")
    assert [(d.index, d.name) for d in second.tool_calls] == [(1, "get_time")]
    assert parser.finish() == StreamDelta()


def test_blank_content_is_held_until_it_proves_to_be_text() -> None:
    parser = get_tool_parser("hermes")()
    assert parser.feed("\n\n").content == ""  # could still be followed by a call
    assert parser.feed("Hello ").content == "\n\nHello "  # it is content after all
    assert parser.feed("world").content == "world"


def test_mistral_streams_content_before_the_marker_at_once() -> None:
    parser = get_tool_parser("mistral")()
    assert parser.feed("Sure, [1] then [TOOL_").content == "Sure, [1] then "
    assert parser.feed(f"CALLS][{WEATHER}]").content == ""
    end = parser.finish()
    assert end.content == "" and [d.name for d in end.tool_calls] == ["get_weather"]


@pytest.mark.parametrize(("name", "first"), [("llama3_json", "Hello"), ("pythonic", "[1")])
def test_whole_output_formats_stream_plain_content_at_once(name: str, first: str) -> None:
    parser = get_tool_parser(name)()
    assert parser.feed(first).content == first
    assert parser.feed(" more").content == " more"
    assert parser.finish() == StreamDelta()


@pytest.mark.parametrize(("name", "text"), [("llama3_json", WEATHER), ("pythonic", '[f(x="y")]')])
def test_whole_output_formats_hold_calls_until_the_end(name: str, text: str) -> None:
    parser = get_tool_parser(name)()
    assert all(parser.feed(ch) == StreamDelta() for ch in text)
    end = parser.finish()
    assert end.content == "" and len(end.tool_calls) == 1 and end.tool_calls[0].index == 0


def test_parse_does_not_disturb_a_stream() -> None:
    parser = get_tool_parser("hermes")()
    parser.feed("<tool_call>")
    assert parser.parse("plain").content == "plain"
    parser.feed(WEATHER)
    assert [d.name for d in parser.finish().tool_calls] == ["get_weather"]


def random_output(name: str, rng: random.Random) -> str:
    """An output mixing calls in the parser's format with malformed calls, partial markers and
    text, so that roughly half parse as calls."""
    pick = rng.choice
    if name == "hermes":
        units = [f"<tool_call>{WEATHER}</tool_call>", f"<tool_call>\n{TIME}\n</tool_call>", "\n", " "]
        units += ["<tool_call>{bad</tool_call>", "<tool_call>", "<tool", "text", "</tool_call>"]
        return "".join(pick(units) for _ in range(rng.randint(0, 6)))
    if name == "llama3_json":
        calls = [pick([WEATHER, TIME, WEATHER, "{bad", '{"x": 1}']) for _ in range(rng.randint(1, 3))]
        head = pick(["", " ", "\n", "<|python_tag|>", "<|py", "x "])
        return head + pick(["; ", ";", " ;\n"]).join(calls) + pick(["", ";", " ", " x"])
    if name == "mistral":
        body = pick([f"[{WEATHER}, {TIME}]", f"[{WEATHER}", 'f{"a": 1}', 'f[ARGS]{"a": 1}g{}', "{", ""])
        tail = "".join(pick(["[TOOL_CALLS]g{}", "[TOOL_CALLS]", "", " x"]) for _ in range(2))
        return pick(["", "hi ", "[1] ", "\n", "[TOOL "]) + "[TOOL_CALLS]" + body + tail
    good = ['f(x="a")', "g()", "h(y=[1, {}], z=None)"]
    calls = [pick([*good, *good, "k(1)", "(", "m(z=w)"]) for _ in range(rng.randint(1, 3))]
    head = pick(["", "", " ", "\n", "x", "["])
    return head + "[" + ", ".join(calls) + pick(["]", "]", "]\n", "] z", ""])


@pytest.mark.parametrize("name", list(CASES))
def test_stream_matches_parse_on_random_outputs(name: str) -> None:
    """Streaming random outputs in random pieces always gives what parsing them whole gives."""
    rng = random.Random(name)
    found = 0
    for _ in range(300):
        text = random_output(name, rng)
        parsed = get_tool_parser(name)().parse(text)
        found += bool(parsed.tool_calls)
        for how in ("chars", f"random{rng.randrange(1000)}"):
            streamed, _ = stream(name, chunks(text, how))
            assert streamed.content == parsed.content, text
            assert named(streamed) == named(parsed), text
        if not parsed.tool_calls:
            assert parsed.content == text
    assert 20 < found < 280  # both kinds of output were tried
