"""Reasoning parsers: split a thinking model's output into `reasoning_content` and `content`.

Chosen per model with `--reasoning-parser` on the worker (published in its model card), as in
vLLM and SGLang. Both styles write the reasoning between `<think>` and `</think>`:

- `deepseek_r1`: the model is always thinking at the start of its output (R1's template puts
  `<think>` in the prompt, so the output may or may not repeat it); everything up to
  `</think>` is reasoning. An output that never closes the tag is all reasoning (cut short
  while thinking).
- `qwen3`: thinking is optional (`enable_thinking`); the output is reasoning only when it opens
  with `<think>`; otherwise it is all content.

Streaming holds back text that may be the start of a tag, so a tag split across tokens never
reaches the client, and what a stream returns concatenates to what `parse` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamo_core.frontend.stop_strings import partial_match_length

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    """One output's split; create one per choice. Subclasses say how the output starts."""

    starts_thinking: bool  # whether the output is reasoning before any tag is seen
    name: str

    def __init__(self) -> None:
        self._state = "start"  # start -> reasoning -> content
        self._held = ""

    def parse(self, text: str) -> ReasoningDelta:
        """The split of a whole output."""
        delta = self.feed(text)
        rest = self.finish()
        return ReasoningDelta(delta.reasoning + rest.reasoning, delta.content + rest.content)

    def feed(self, text: str) -> ReasoningDelta:
        out = ReasoningDelta()
        text = self._held + text
        self._held = ""
        if self._state == "start":
            stripped = text.lstrip()
            if THINK_START.startswith(stripped) and len(stripped) < len(THINK_START):
                self._held = text  # empty, or a tag still arriving
                return out
            if stripped.startswith(THINK_START):
                self._state = "reasoning"
                text = stripped[len(THINK_START):]
            else:
                self._state = "reasoning" if self.starts_thinking else "content"
        if self._state == "reasoning":
            end = text.find(THINK_END)
            if end < 0:
                keep = partial_match_length(text, (THINK_END,))
                out.reasoning = text[: len(text) - keep]
                self._held = text[len(text) - keep:]
                return out
            out.reasoning = text[:end]
            text = text[end + len(THINK_END):]
            self._state = "after_reasoning"
        if self._state == "after_reasoning":
            # Models put a newline or two after `</think>`: not part of the answer.
            text = text.lstrip("\n")
            if not text:
                return out
            self._state = "content"
        out.content = text
        return out

    def finish(self) -> ReasoningDelta:
        """End of output: release what was held back."""
        held, self._held = self._held, ""
        if self._state == "reasoning" or (self._state == "start" and self.starts_thinking):
            return ReasoningDelta(reasoning=held.lstrip() if self._state == "start" else held)
        return ReasoningDelta(content=held)


class DeepSeekR1Parser(ReasoningParser):
    name = "deepseek_r1"
    starts_thinking = True


class Qwen3Parser(ReasoningParser):
    name = "qwen3"
    starts_thinking = False


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {p.name: p for p in (DeepSeekR1Parser, Qwen3Parser)}


def get_reasoning_parser(name: str) -> type[ReasoningParser]:
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown reasoning parser {name!r}; choose from {', '.join(REASONING_PARSERS)}") from None
