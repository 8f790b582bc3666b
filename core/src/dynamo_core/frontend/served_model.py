"""The handle of one served model, as every frontend stage sees it: its card, tokenizer,
routers and live workers.

`ModelRegistry` makes and updates these from discovery; the preprocessor, engine client,
disaggregation and output stages read them. It lives apart from the registry so that those
stages need not import the registry (and its discovery and transport machinery) to name it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from dynamo_core.frontend.logprobs import TokenTexts
from dynamo_core.protocols.discovery import InstanceRecord, ModelCard
from dynamo_core.protocols.names import WHOLE_REQUEST_ROLES
from dynamo_core.routers.base import Router, RouterContext, WorkerState
from dynamo_core.tokenizer import TokenizerBundle

# Counted in `role_counts` beside the roles: prefill workers with a rendezvous handoff, and
# prefill or decode workers whose card says they apply no grammar (structured output).
BOOTSTRAP_PREFILL = "prefill+bootstrap"
SPLIT_WITHOUT_GRAMMAR = "split-without-grammar"


@dataclass
class WorkerHandle:
    record: InstanceRecord
    state: WorkerState
    subscription: asyncio.Task | None = None
    # It sent nothing on a request within the stall timeout (engine_client.py): not routed to
    # until its next load report shows it answers again.
    stalled: bool = False

    @property
    def role(self) -> str:
        return self.record.model.role if self.record.model is not None else "agg"

    @property
    def disagg_bootstrap(self) -> dict | None:
        """A prefill worker's rendezvous (`EngineInfo.disagg_bootstrap`); None: it answers first."""
        return self.record.model.disagg_bootstrap if self.record.model is not None else None


@dataclass
class ServedModel:
    name: str
    card: ModelCard
    tokenizer: TokenizerBundle
    router: Router  # routes whole requests and decode phases (agg and decode workers)
    # What `load_tokenizer` loaded `tokenizer` from (before the card's chat template), so the
    # prompt pool's processes can load the same; None: the pool cannot serve this model.
    tokenizer_source: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    workers: dict[str, WorkerHandle] = field(default_factory=dict)
    # Routes prefill phases among prefill workers: a router of its own, so that a KV-aware
    # router indexes and scores prefill workers apart from decode workers.
    prefill_router: Router | None = None
    router_context: RouterContext | None = None
    router_factory: Callable[[RouterContext], Router] | None = None
    # Live workers per role (and per `BOOTSTRAP_PREFILL`, `SPLIT_WITHOUT_GRAMMAR`), kept with
    # `workers` by `add_worker`/`update_worker`/`remove_worker`, so that what every request
    # asks of the pool (`has_role`) costs no walk over the workers.
    role_counts: collections.Counter[str] = field(default_factory=collections.Counter)
    # Whether a rendezvous prefill worker ever joined: once all have left, the decode workers
    # beside them still serve only split requests, so a request served whole may be declined.
    had_rendezvous_prefill: bool = False
    # The rendezvous prefill workers among `workers` (the pool a split is routed in).
    _bootstrap_prefill: dict[str, WorkerState] = field(default_factory=dict, init=False, repr=False)

    @functools.cached_property
    def encoded_card(self) -> bytes:
        """The card as msgpack, for the prompt pool's processes (sent with every job)."""
        return msgspec.msgpack.encode(self.card)

    @functools.cached_property
    def token_texts(self) -> TokenTexts:
        """Token ids as logprobs show them (built on the first request that asks)."""
        return TokenTexts(self.tokenizer)

    def worker_states(
        self, exclude: set[str] | frozenset[str] = frozenset(), roles: tuple[str, ...] = WHOLE_REQUEST_ROLES
    ) -> list[WorkerState]:
        return [h.state for wid, h in self.workers.items() if wid not in exclude and h.role in roles and not h.stalled]

    def has_role(self, role: str) -> bool:
        """Whether a live worker has `role` (or is counted as `BOOTSTRAP_PREFILL`, ...)."""
        return self.role_counts[role] > 0

    def bootstrap_prefill_states(self) -> list[WorkerState]:
        """The prefill workers that hand KV over through a rendezvous (`disagg_bootstrap`)."""
        return list(self._bootstrap_prefill.values())

    def add_worker(self, handle: WorkerHandle) -> None:
        self.workers[handle.state.worker_id] = handle
        self._count(handle, 1)

    def update_worker(self, worker_id: str, record: InstanceRecord) -> None:
        """A worker registered again (its card may say something new)."""
        handle = self.workers[worker_id]
        self._count(handle, -1)
        handle.record = record
        self._count(handle, 1)

    def remove_worker(self, worker_id: str) -> WorkerHandle | None:
        handle = self.workers.pop(worker_id, None)
        if handle is not None:
            self._count(handle, -1)
        return handle

    def _count(self, handle: WorkerHandle, change: int) -> None:
        role, card = handle.role, handle.record.model
        self.role_counts[role] += change
        if role == "prefill" and handle.disagg_bootstrap is not None:
            self.role_counts[BOOTSTRAP_PREFILL] += change
            if change > 0:
                self._bootstrap_prefill[handle.state.worker_id] = handle.state
                self.had_rendezvous_prefill = True
            else:
                self._bootstrap_prefill.pop(handle.state.worker_id, None)
        if role in ("prefill", "decode") and card is not None and not card.structured_output:
            self.role_counts[SPLIT_WITHOUT_GRAMMAR] += change

    def router_of(self, role: str) -> Router:
        """The router of the pool a worker of `role` belongs to (made on first use)."""
        if role != "prefill":
            return self.router
        if self.prefill_router is None:
            assert self.router_context is not None and self.router_factory is not None
            self.prefill_router = self.router_factory(dataclasses.replace(self.router_context, pool="prefill"))
        return self.prefill_router
