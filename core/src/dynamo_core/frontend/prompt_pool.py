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
# Requests cross as JSON, not msgpack: a client's integer may exceed msgpack's 64 bits (in
# `tools` or `chat_template_kwargs`), which JSON, as the client sent it, carries unchanged.
_request_encoder = msgspec.json.Encoder()
_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)

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
    bundle = load_tokenizer(source).with_chat_template(decoded.chat_template)
    bundle.prefix_cache  # its boundary probe now, with the tokenizer's load, not inside a request
    return _WorkerModel(decoded, bundle)


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


@dataclasses.dataclass(eq=False)
class _Lane:
    """One prompt process (an executor of one) and the jobs sent to it that have not returned."""

    executor: ProcessPoolExecutor | None = None
    in_flight: int = 0


def chat_affinity(req: ChatCompletionRequest) -> int:
    """What stays the same across a chat's turns: its messages up to the first user message
    (a system prompt alone is shared by many chats). Equal for every turn of one chat, so the
    turns go to one process, whose prefix cache holds the chat's earlier turns."""
    key = []
    for message in req.messages:
        content = message.content
        if isinstance(content, list):  # content parts: their JSON
            content = _request_encoder.encode(content)
        key.append((message.role, content))
        if message.role == "user":
            break
    return hash(tuple(key))


class PromptPool:
    """`workers` spawned processes that render and encode prompts for the event loop.

    Each process is a lane of its own, so that a chat's turns can go to the process that
    encoded its earlier turns (`chat_affinity`; each process has its own prefix cache, see
    tokenizer_cache.py), unless that process has more than one job beyond the least busy one:
    re-encoding a prompt elsewhere costs less than waiting behind a queue."""

    def __init__(self, workers: int, min_chars: int = 8192):
        if workers < 1:
            raise ValueError(f"a prompt pool needs at least one worker, got {workers}")
        self.workers = workers
        self.min_chars = min_chars  # prompts longer than this (characters) come here
        self._lanes = [_Lane() for _ in range(workers)]
        self._warming: asyncio.Task | None = None

    def _executor_of(self, lane: _Lane) -> ProcessPoolExecutor:
        # Created on first use. Processes are spawned by `submit`, which runs on the loop's
        # thread: PR_SET_PDEATHSIG fires when the spawning *thread* ends, and that one lasts.
        if lane.executor is None:
            lane.executor = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
            )
        return lane.executor

    def _pick(self, affinity: int | None) -> _Lane:
        least = min(self._lanes, key=lambda lane: lane.in_flight)
        if affinity is None:
            return least
        preferred = self._lanes[affinity % len(self._lanes)]
        return preferred if preferred.in_flight <= least.in_flight + 1 else least

    async def warm(self) -> None:
        """Start every process and import prompt encoding in it, so the first long prompt
        does not wait for an interpreter to start."""
        loop = asyncio.get_running_loop()
        started = [(lane, self._executor_of(lane)) for lane in self._lanes]
        results = await asyncio.gather(
            *(loop.run_in_executor(pool, _warm) for _, pool in started), return_exceptions=True
        )
        pids = []
        for (lane, pool), result in zip(started, results):
            if isinstance(result, BrokenProcessPool):
                self._replace(lane, pool)
                log.error("a prompt pool process died while starting; it starts again on its next prompt")
            elif isinstance(result, BaseException):
                raise result
            else:
                pids.append(result)
        log.info("prompt pool ready: %d process(es), pids %s", len(pids), sorted(pids))

    def start(self) -> None:
        """Warm the processes in the background (the frontend's startup)."""
        if self._warming is None:
            self._warming = asyncio.create_task(self.warm(), name="prompt-pool-warm")

    async def render_and_encode_chat(
        self, model: ServedModel, req: ChatCompletionRequest
    ) -> tuple[list[int], list[int] | None]:
        """`prompt_encoding.render_and_encode_chat(model, req)`, run in a worker."""
        return await self._run(_chat_job, model, _request_encoder.encode(req), chat_affinity(req))

    async def encode_completion_prompts(
        self, model: ServedModel, prompt: CompletionPrompt
    ) -> list[tuple[list[int], str | None]]:
        """`prompt_encoding.encode_completion_prompts(model, prompt)`, run in a worker."""
        return await self._run(_completion_job, model, prompt, None)

    async def _run(
        self, job: Callable[[str, bytes, Any], T | _Refusal], model: ServedModel, payload: Any, affinity: int | None
    ) -> T:
        assert model.tokenizer_source is not None, "the preprocessor sends only such models here"
        card = model.encoded_card
        loop = asyncio.get_running_loop()
        # A worker that died (killed, out of memory) breaks its executor: replace it and try
        # once more, so the requests that were merely queued behind it still succeed.
        for _ in range(2):
            lane = self._pick(affinity)
            pool = self._executor_of(lane)
            lane.in_flight += 1
            try:
                result = await loop.run_in_executor(pool, job, model.tokenizer_source, card, payload)
            except BrokenProcessPool:
                self._replace(lane, pool)
                continue
            finally:
                lane.in_flight -= 1
            if isinstance(result, _Refusal):
                raise BadRequestError(result.message, param=result.param, code=result.code)
            return result
        raise ServiceUnavailableError("the prompt preprocessing processes died; try again")

    def _replace(self, lane: _Lane, broken: ProcessPoolExecutor) -> None:
        if lane.executor is broken:
            log.warning("a prompt pool process died; starting a new one")
            lane.executor = None
            broken.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the processes (the frontend's shutdown)."""
        warming, self._warming = self._warming, None
        if warming is not None:
            warming.cancel()
        executors = [lane.executor for lane in self._lanes if lane.executor is not None]
        for lane in self._lanes:
            lane.executor = None
        # Joining waits for a job in progress; off the loop, so shutdown can go on.
        await asyncio.gather(*(asyncio.to_thread(e.shutdown, wait=True, cancel_futures=True) for e in executors))
