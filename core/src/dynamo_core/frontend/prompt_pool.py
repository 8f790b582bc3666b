"""Worker processes that template and tokenize long prompts, so the event loop keeps streaming.

HF `tokenizers` holds the GIL for a whole `encode` (≈0.5 s for a 56k-token prompt with a 32k
BPE vocabulary on one core) and Jinja rendering is pure Python, so `asyncio.to_thread` still
stalls every stream the frontend's loop serves. A `PromptPool` does that work in other
processes instead. Each process loads a model's tokenizer once, from the source the frontend
loaded it from (`ServedModel.tokenizer_source`) with the card's chat-template override on top,
and runs the same `prompt_encoding` functions as the loop, so the token ids and the 400s are
exactly those the loop would have produced.

The processes are spawned, not forked: the frontend runs uvloop and threads, whose state a
fork would copy half-way. Requests and cards cross as msgpack bytes, token ids come back as
lists of ints, and a `BadRequestError` comes back field by field (an exception pickles with
its first argument only, which would lose `param` and `code`).

The frontend's serving state owns one pool (`start`/`close` from its startup and shutdown) and
hands it to the preprocessor, which decides per prompt whether to send it here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import msgspec

from dynamo_core.frontend.errors import BadRequestError, ServiceUnavailableError
from dynamo_core.frontend.prompt_encoding import encode_completion_prompts, render_and_encode_chat
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.protocols.discovery import ModelCard
from dynamo_core.protocols.openai import ChatCompletionRequest, CompletionPrompt
from dynamo_core.runtime.children import die_with_parent
from dynamo_core.tokenizer import TokenizerBundle, load_tokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_card_decoder = msgspec.msgpack.Decoder(ModelCard)
_chat_decoder = msgspec.msgpack.Decoder(ChatCompletionRequest)

# ---------------------------------------------------------------------------------------------
# in the worker processes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Refusal:
    """A `BadRequestError` raised in a worker, carried back as its fields."""

    message: str
    param: str | None
    code: str | None


@dataclasses.dataclass(frozen=True)
class _WorkerModel:
    """The part of a `ServedModel` that `prompt_encoding` reads (a `PromptModel`)."""

    card: ModelCard
    tokenizer: TokenizerBundle


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; the frontend decides when its pool stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # no orphans if the frontend is killed outright (as `serve` does for its children)


def _warm() -> int:
    """Start the process (importing this module imports what a job needs, most of a first
    job's time); return its pid."""
    return os.getpid()


@functools.lru_cache(maxsize=16)
def _worker_model(source: str, card: bytes) -> _WorkerModel:
    decoded = _card_decoder.decode(card)
    return _WorkerModel(decoded, load_tokenizer(source).with_chat_template(decoded.chat_template))


def _refusal(exc: BadRequestError) -> _Refusal:
    return _Refusal(exc.message, exc.param, exc.code)


def _chat_job(source: str, card: bytes, request: bytes) -> tuple[list[int], list[int] | None] | _Refusal:
    try:
        return render_and_encode_chat(_worker_model(source, card), _chat_decoder.decode(request))
    except BadRequestError as exc:
        return _refusal(exc)


def _completion_job(source: str, card: bytes, prompt: CompletionPrompt) -> list[tuple[list[int], str | None]] | _Refusal:
    try:
        return encode_completion_prompts(_worker_model(source, card), prompt)
    except BadRequestError as exc:
        return _refusal(exc)


# ---------------------------------------------------------------------------------------------
# in the frontend
# ---------------------------------------------------------------------------------------------


class PromptPool:
    """`workers` spawned processes that render and encode prompts for the event loop."""

    def __init__(self, workers: int, min_chars: int = 8192):
        if workers < 1:
            raise ValueError(f"a prompt pool needs at least one worker, got {workers}")
        self.workers = workers
        self.min_chars = min_chars  # prompts longer than this (characters) come here
        self._executor: ProcessPoolExecutor | None = None
        self._warming: asyncio.Task | None = None

    def _get_executor(self) -> ProcessPoolExecutor:
        # Created on first use. Processes are spawned by `submit`, which runs on the loop's
        # thread: PR_SET_PDEATHSIG fires when the spawning *thread* ends, and that one lasts.
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
            )
        return self._executor

    async def warm(self) -> None:
        """Start every process and import prompt encoding in it, so the first long prompt
        does not wait for an interpreter to start. While no process is idle, each submitted
        job spawns one more."""
        loop = asyncio.get_running_loop()
        pool = self._get_executor()
        try:
            pids = await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(self.workers)))
        except BrokenProcessPool:
            self._replace(pool)
            log.error("the prompt pool's processes died while starting; they start again on the next long prompt")
            return
        log.info("prompt pool ready: %d process(es), pids %s", self.workers, sorted(set(pids)))

    def start(self) -> None:
        """Warm the processes in the background (the frontend's startup)."""
        if self._warming is None:
            self._warming = asyncio.create_task(self.warm(), name="prompt-pool-warm")

    async def render_and_encode_chat(
        self, model: ServedModel, req: ChatCompletionRequest
    ) -> tuple[list[int], list[int] | None]:
        """`prompt_encoding.render_and_encode_chat(model, req)`, run in a worker."""
        try:
            request = _encoder.encode(req)
        except OverflowError:
            # An int beyond 64 bits in a free-form field (tool schemas, template kwargs), which
            # msgpack cannot carry: render this one in a thread instead (it was a 500).
            return await asyncio.to_thread(render_and_encode_chat, model, req)
        return await self._run(_chat_job, model, request)

    async def encode_completion_prompts(
        self, model: ServedModel, prompt: CompletionPrompt
    ) -> list[tuple[list[int], str | None]]:
        """`prompt_encoding.encode_completion_prompts(model, prompt)`, run in a worker."""
        return await self._run(_completion_job, model, prompt)

    async def _run(self, job: Callable[[str, bytes, Any], T | _Refusal], model: ServedModel, payload: Any) -> T:
        assert model.tokenizer_source is not None, "the preprocessor sends only such models here"
        card = model.encoded_card
        loop = asyncio.get_running_loop()
        # A worker that died (killed, out of memory) breaks the whole executor: replace it and
        # try once more, so the requests that were merely queued behind it still succeed.
        for _ in range(2):
            pool = self._get_executor()
            try:
                result = await loop.run_in_executor(pool, job, model.tokenizer_source, card, payload)
            except BrokenProcessPool:
                self._replace(pool)
                continue
            if isinstance(result, _Refusal):
                raise BadRequestError(result.message, param=result.param, code=result.code)
            return result
        raise ServiceUnavailableError("the prompt preprocessing processes died; try again")

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._executor is broken:
            log.warning("a prompt pool process died; starting new ones")
            self._executor = None
            broken.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the processes (the frontend's shutdown)."""
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.cancel()
        executor, self._executor = self._executor, None
        if executor is not None:
            # Joining waits for a job in progress; off the loop, so shutdown can go on.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
