"""Engine deltas -> text deltas: incremental detokenization, stop strings, finish reasons, usage.

`run_choices` drives every choice's engine stream and yields `ChoiceDelta`s in arrival order;
a choice that hits a stop string is finished here and its engine stream closed (which cancels
the request on the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from dynamo_core.frontend.detokenizer import PROMPT_TAIL_TOKENS, IncrementalDetokenizer
from dynamo_core.frontend.errors import EngineError
from dynamo_core.frontend.stages import ChoiceDelta, PreparedChoice, UsageCounter
from dynamo_core.frontend.stop_strings import StopStringMatcher
from dynamo_core.protocols.engine import EngineOutput, FinishReason
from dynamo_core.tokenizer import TokenizerBundle


_FINISH_TEXT = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
}


class ChoicePostprocessor:
    """Turns one choice's engine deltas into text deltas."""

    def __init__(self, index: int, tokenizer: TokenizerBundle, stop: list[str], usage: UsageCounter,
                 prompt_tail: list[int] | None = None):
        self.index = index
        self._detok = IncrementalDetokenizer(tokenizer, prompt_tail)
        self._stop = StopStringMatcher(stop) if stop else None
        self._usage = usage
        self.finished = False

    def process(self, output: EngineOutput) -> ChoiceDelta | None:
        if output.prompt_tokens is not None:
            self._usage.prompt_tokens += output.prompt_tokens
            self._usage.cached_tokens += output.cached_tokens or 0
        self._usage.completion_tokens += len(output.token_ids)
        if output.finish_reason is FinishReason.ERROR:
            raise EngineError(output.error or "the engine failed the request")
        text = self._detok.add(output.token_ids) if output.token_ids else ""
        finish = None
        if output.finish_reason is not None:
            text += self._detok.flush()
            finish = _FINISH_TEXT[output.finish_reason]
        if self._stop is not None:
            text, hit = self._stop.feed(text)
            if hit:
                finish = "stop"
            elif finish is not None:
                text += self._stop.flush()
        if finish is not None:
            self.finished = True
        if not text and finish is None and output.logprobs is None:
            return None
        return ChoiceDelta(self.index, text, finish, list(output.token_ids), output.logprobs, output.top_logprobs,
                           output.prompt_logprobs, output.prompt_top_logprobs)


StreamFactory = Callable[[PreparedChoice], AsyncIterator[EngineOutput]]


async def _run_one(choice: PreparedChoice, post: ChoicePostprocessor, open_stream: StreamFactory) -> AsyncIterator[ChoiceDelta]:
    stream = open_stream(choice)
    try:
        async for output in stream:
            delta = post.process(output)
            if delta is not None:
                yield delta
            if post.finished:
                return
        if not post.finished:
            raise EngineError("the worker's stream ended without a finish reason")
    finally:
        await stream.aclose()


def run_choices(
    choices: list[PreparedChoice],
    tokenizer: TokenizerBundle,
    stop: list[str],
    open_stream: StreamFactory,
    usage: UsageCounter,
    continues_prompt: bool = False,
) -> AsyncIterator[ChoiceDelta]:
    """Every choice's deltas as they come. Closing this iterator cancels them all.

    `continues_prompt` (text completions): the output is decoded as the prompt's continuation,
    so a first token that opens with a space keeps it ("is" -> " Paris", as OpenAI answers).
    Chat replies start a new message and are decoded alone."""
    posts = [ChoicePostprocessor(c.index, tokenizer, stop, usage,
                                 c.prompt_token_ids[-PROMPT_TAIL_TOKENS:] if continues_prompt else None)
             for c in choices]
    if len(choices) == 1:
        # The common case needs no tasks or queue, nor a generator around the choice's own:
        # each delta passes one generator less.
        return _run_one(choices[0], posts[0], open_stream)
    return _run_many(choices, posts, open_stream)


async def _run_many(
    choices: list[PreparedChoice], posts: list[ChoicePostprocessor], open_stream: StreamFactory
) -> AsyncIterator[ChoiceDelta]:
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(choice: PreparedChoice, post: ChoicePostprocessor) -> None:
        try:
            async for delta in _run_one(choice, post, open_stream):
                queue.put_nowait(delta)
            queue.put_nowait(done)
        except Exception as exc:  # delivered to the consumer, which re-raises it
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(pump(c, p)) for c, p in zip(choices, posts)]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
