"""The contract between a worker and the engine it hosts."""

from __future__ import annotations

import abc
import argparse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dynamo_core.protocols.engine import EngineInfo, EngineOutput, PreprocessedRequest
from dynamo_core.protocols.kv_events import KvEvent, KvStored, LoadMetrics

if TYPE_CHECKING:
    from dynamo_core.transfer.base import TransferAgent


class KvEventSink(abc.ABC):
    """Where an engine publishes its KV cache events; the worker numbers and forwards them."""

    @abc.abstractmethod
    def publish(self, events: Sequence[KvEvent]) -> None:
        """Queue events for the event plane. Must not block; call from the event loop."""


class NullKvEventSink(KvEventSink):
    def publish(self, events: Sequence[KvEvent]) -> None:
        pass


@dataclass
class EngineContext:
    """Everything a worker hands to an engine factory."""

    model_path: str | None  # an HF-format directory, or None for the built-in tokenizer
    served_name: str
    options: argparse.Namespace  # the engine's own command-line options, parsed
    kv_events: KvEventSink = field(default_factory=NullKvEventSink)
    worker_id: str = ""
    role: str = "agg"  # agg | prefill | decode
    host: str = "127.0.0.1"  # the worker's `--host`: where peers reach it (e.g. for KV transfer)
    # Prefill and decode workers: the worker's transfer agent (`--transfer`), through which the
    # engine exposes and pulls KV blocks; started before `Engine.start()` (use it from there on),
    # and only for engines with `uses_transfer_agent`. None for aggregated workers.
    transfer: TransferAgent | None = None


class Engine(abc.ABC):
    """One inference engine instance, hosted by one worker process.

    Lifecycle: ``start()`` once, then any number of concurrent ``generate()`` streams, then
    ``stop()``. Cancellation: the worker closes the async iterator (``aclose()``) or cancels
    the task consuming it; the engine must then free the request's resources promptly.
    """

    # Whether `generate` honours `request.guided` (structured output); the model card tells
    # the frontend, which refuses constrained requests to engines that would ignore them.
    supports_structured_output: bool = False
    # Whether `generate` honours `request.output.prompt_logprobs` (on its first delta); the
    # frontend refuses completions `echo` + `logprobs` to engines that would not.
    supports_prompt_logprobs: bool = False
    # Whether requests should carry the last chat message's own token ids (the echo engine).
    wants_last_message_tokens: bool = False
    # Whether it can run as a prefill or decode worker (`request.disagg`, `release_kv`).
    supports_disaggregation: bool = False
    # Whether it moves KV through dynamo's transfer agent (`EngineContext.transfer`); False for
    # engines that bring their own (vLLM's NIXL connector): the worker then starts none.
    uses_transfer_agent: bool = True

    @abc.abstractmethod
    async def start(self) -> EngineInfo:
        """Load the model and return block size, KV capacity and context length."""

    @abc.abstractmethod
    def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        """Stream deltas for one request. The last delta has a ``finish_reason``."""

    @abc.abstractmethod
    def load_metrics(self, worker_id: str) -> LoadMetrics:
        """Current load, cheap enough to call every few tens of milliseconds."""

    def kv_snapshot(self) -> list[KvStored]:
        """Every block currently cached, as ``stored`` events in parent-before-child order.

        Used to bring a new (or resynchronising) router up to date. Engines that cannot
        enumerate their cache return ``[]``; routers then learn from later events only.
        """
        return []

    def release_kv(self, hold_id: str) -> None:
        """Prefill role: the decode worker has the KV held under ``hold_id`` (or never will):
        free it. Unknown ids are ignored; engines also free held KV after a timeout."""

    async def stop(self) -> None:
        """Release the engine's resources."""


@dataclass(frozen=True)
class EngineSpec:
    """What the ``dynamo_engines`` hook returns for each engine."""

    name: str
    create: Callable[[EngineContext], Engine]
    description: str = ""
