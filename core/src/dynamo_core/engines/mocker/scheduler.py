"""Which requests run in the next step, and how many tokens each computes.

Per step, with a budget of `max_num_batched_tokens`:
1. every running request that finished its prefill decodes one token (it may need a new block;
   when none is left, the most recently admitted running request is preempted: its blocks are
   freed and it waits again at the head of the queue, to be recomputed);
2. running requests still prefilling continue with the next chunk of their prompt;
3. waiting requests are admitted, oldest first, while sequences, blocks and budget allow: each
   reuses its cached prefix blocks and takes blocks for the rest of its prompt.
A prompt's first output token comes at the end of the step that computes its last prompt token.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from dynamo_core.engines.mocker.kv_cache import BlockPool, OutOfBlocksError
from dynamo_core.protocols.engine import PreprocessedRequest


@dataclass(eq=False)
class MockRequest:
    request: PreprocessedRequest
    queue: asyncio.Queue
    prompt_len: int
    max_output: int  # capped by the context length
    prompt_hashes: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # prompt + generated so far
    blocks: list[int] = field(default_factory=list)
    computed: int = 0  # tokens whose KV is in `blocks`
    cached_tokens: int = 0  # prompt tokens found in the prefix cache at (first) admission
    committed_blocks: int = 0  # full blocks already offered to the prefix cache
    last_hash: int | None = None
    generated: int = 0
    offset: int = 0  # where in the engine's output token cycle this request starts
    first_output_sent: bool = False
    finished: bool = False

    @property
    def prefill_target(self) -> int:
        """Tokens whose KV must exist before the next decode. The newest generated token's KV
        is computed by the decode step that reads it; a fresh prompt's last token by prefill."""
        return len(self.tokens) if self.generated == 0 else len(self.tokens) - 1

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_target


@dataclass
class StepPlan:
    prefill: list[tuple[MockRequest, int]]  # (request, prompt tokens computed this step)
    decode: list[MockRequest]
    failed: list[tuple[MockRequest, str]]

    @property
    def prefill_tokens(self) -> int:
        return sum(n for _, n in self.prefill)

    @property
    def empty(self) -> bool:
        return not (self.prefill or self.decode or self.failed)


class Scheduler:
    def __init__(self, pool: BlockPool, max_num_seqs: int, max_num_batched_tokens: int):
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[MockRequest] = deque()
        self.running: list[MockRequest] = []
        self.preemptions = 0

    def add(self, req: MockRequest) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, req: MockRequest) -> None:
        """Take a request out (finished or aborted) and release its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        if req.blocks:
            self.pool.free(req.blocks)
            req.blocks = []

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.pool.block_size)

    def _preempt(self, victim: MockRequest) -> None:
        self.running.remove(victim)
        self.pool.free(victim.blocks)
        victim.blocks, victim.computed, victim.committed_blocks, victim.last_hash = [], 0, 0, None
        self.waiting.appendleft(victim)
        self.preemptions += 1

    def schedule(self) -> StepPlan:
        budget = self.max_num_batched_tokens
        plan = StepPlan(prefill=[], decode=[], failed=[])
        # 1. decodes
        for req in list(self.running):
            if req not in self.running or req.prefilling:
                continue
            if budget < 1:
                break
            while len(req.blocks) < self._blocks_for(len(req.tokens)) and req in self.running:
                try:
                    req.blocks += self.pool.allocate(1)
                except OutOfBlocksError:
                    self._preempt(self.running[-1])  # most recently admitted goes first
            if req in self.running:
                plan.decode.append(req)
                budget -= 1
        # 2. prefill chunks of admitted requests
        for req in self.running:
            if req.prefilling and budget > 0:
                chunk = min(req.prefill_target - req.computed, budget)
                plan.prefill.append((req, chunk))
                budget -= chunk
        # 3. admissions
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            needed = self._blocks_for(len(req.tokens))
            if needed > self.pool.num_blocks:
                self.waiting.popleft()
                plan.failed.append((req, f"prompt of {req.prompt_len} tokens needs {needed} KV blocks; "
                                         f"the cache holds {self.pool.num_blocks}"))
                continue
            # Leave at least one token to compute: the step that computes it yields the output.
            hashes = self._hashes(req)[: (req.prefill_target - 1) // self.pool.block_size]
            cached = self.pool.cached_prefix_length(hashes)
            if needed - cached > self.pool.free_blocks:
                break  # wait for blocks to come free
            matched = self.pool.match_prefix(hashes[:cached])
            try:
                # Matching may have taken evictable blocks out of the free count.
                req.blocks = matched + self.pool.allocate(needed - len(matched))
            except OutOfBlocksError:
                self.pool.free(matched)
                break
            self.waiting.popleft()
            req.computed = len(matched) * self.pool.block_size
            req.committed_blocks = len(matched)
            req.last_hash = hashes[len(matched) - 1] if matched else None
            if not req.first_output_sent:
                req.cached_tokens = req.computed
            self.running.append(req)
            chunk = min(req.prefill_target - req.computed, budget)
            plan.prefill.append((req, chunk))
            budget -= chunk
        return plan

    def _hashes(self, req: MockRequest) -> list[int]:
        if req.generated == 0:
            return req.prompt_hashes
        return self.pool.prompt_hashes(req.tokens)  # recomputing after preemption

    def commit(self, plan: StepPlan) -> list[MockRequest]:
        """Apply a step's computation; return the requests that produce a token now."""
        producing: list[MockRequest] = []
        for req, chunk in plan.prefill:
            if req.finished or req not in self.running:
                continue
            req.computed += chunk
            self._cache_full_blocks(req)
            # A fresh prompt yields its first token; a recomputed one decodes next step.
            if not req.prefilling and req.generated == 0:
                producing.append(req)
        for req in plan.decode:
            if req.finished or req not in self.running:
                continue
            req.computed = len(req.tokens)
            self._cache_full_blocks(req)
            producing.append(req)
        return producing

    def _cache_full_blocks(self, req: MockRequest) -> None:
        full = req.computed // self.pool.block_size
        if full > req.committed_blocks:
            req.last_hash = self.pool.commit_full_blocks(req.blocks, req.tokens, req.committed_blocks, full, req.last_hash)
            req.committed_blocks = full

