"""Which sequences run in the next step, and how many tokens each computes.

A sequence's tokens are its prompt plus what it has generated; `num_computed` of them have
their KV in the cache. A step computes some of the rest, and when a sequence's tokens are all
computed, the step samples its next token: after a whole prompt (its first output token),
after one token (a decode), or after recomputing everything (following a preemption).

Per step, with a budget of `max_num_batched_tokens` tokens:
1. decodes first: every running sequence with one token left to compute takes one. It may need
   a new block; when none is left, even after evicting unreferenced cached blocks, the most
   recently admitted running sequence is preempted (its blocks freed, back at the head of the
   queue, to be recomputed later), possibly the decoding sequence itself;
2. running sequences still prefilling continue with the next chunk of their prompt (chunked
   prefill). A chunk that needs blocks may preempt newer sequences not scheduled this step,
   else it shrinks to the room there is;
3. waiting sequences are admitted, oldest first, while sequences, budget and free blocks
   allow: each reuses the longest cached run of its leading full blocks and takes blocks for
   its first chunk.
Blocks are allocated as chunks need them, as in vLLM's v1 scheduler.

A sequence whose prompt KV comes from elsewhere (a decode worker in disaggregated serving,
`kv_tokens` > 0) is admitted without compute: it takes blocks for those tokens and waits,
running but never scheduled or preempted, until the engine has pulled them into its blocks
(`loaded`), or computes them itself if the pull failed (`load_failed`).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from dynamo_core.engines.mocker.kv_cache import BlockPool, BlockTable, OutOfBlocksError, extend_block_hashes


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True, kw_only=True)
class Sequence:
    token_ids: list[int]  # prompt, then generated tokens
    prompt_len: int
    num_computed: int = 0  # leading tokens whose KV is in `table`'s blocks
    cached_tokens: int | None = None  # prompt tokens found in the prefix cache at first admission
    status: SequenceStatus = SequenceStatus.WAITING
    table: BlockTable = field(default_factory=BlockTable)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of full blocks, grown lazily
    scheduled_step: int = -1  # the last step that scheduled this sequence
    kv_tokens: int = 0  # leading tokens whose KV is to be pulled from another worker
    loading: bool = False  # admitted, its blocks being filled by a pull


@dataclass(slots=True)
class StepPlan:
    step: int
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens computed)
    prefill_chunks: list[tuple[int, int]] = field(default_factory=list)  # (start position, tokens)
    num_decodes: int = 0
    decode_kv_tokens: int = 0  # context tokens the decoding sequences attend to
    loads: list[Sequence] = field(default_factory=list)  # admitted this step to pull their KV

    @property
    def empty(self) -> bool:
        return not self.scheduled and not self.loads


class Scheduler:
    def __init__(self, pool: BlockPool, max_num_seqs: int, max_num_batched_tokens: int):
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order, oldest first
        self.preemptions = 0
        self.steps = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def loading(self) -> int:
        """Running sequences waiting for their KV to arrive."""
        return sum(1 for seq in self.running if seq.loading)

    def loaded(self, seq: Sequence) -> None:
        """The pull into `seq`'s blocks is done: its first `kv_tokens` tokens are computed."""
        seq.loading = False
        # Pulled KV for the whole prompt still leaves its last token to compute (to sample).
        seq.num_computed = min(seq.kv_tokens, len(seq.token_ids) - 1)
        seq.kv_tokens = 0  # a later preemption recomputes
        full = seq.num_computed // self.pool.block_size
        if full > seq.table.committed:
            if self.pool.enable_prefix_caching:
                extend_block_hashes(seq.block_hashes, seq.token_ids, self.pool.block_size)
            self.pool.commit_full_blocks(seq.table, seq.block_hashes, seq.token_ids, full)

    def load_failed(self, seq: Sequence) -> None:
        """The pull failed: `seq` computes its prompt here, past the prefix it found cached."""
        seq.loading = False
        seq.kv_tokens = 0

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and release its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        if seq.table.block_ids:
            self.pool.release(seq.table)

    def detach(self, seq: Sequence) -> BlockTable:
        """Take a running sequence out as finished but keep its blocks referenced; the caller
        now owns the returned table and releases it (`pool.release`)."""
        self.running.remove(seq)
        seq.status = SequenceStatus.FINISHED
        table, seq.table = seq.table, BlockTable()
        return table

    # --- one step -----------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan(step=self.steps)
        self.steps += 1
        budget = self._schedule_decodes(plan, self.max_num_batched_tokens)
        budget = self._schedule_prefill_chunks(plan, budget)
        self._admit(plan, budget)
        return plan

    def complete(self, plan: StepPlan) -> list[Sequence]:
        """Apply a step's computation; return the sequences that sample a token now (in the
        order scheduled). Sequences aborted while the step ran are skipped."""
        pool = self.pool
        caching = pool.enable_prefix_caching
        size = pool.block_size
        sampling: list[Sequence] = []
        for seq, n in plan.scheduled:
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.num_computed += n
            full = seq.num_computed // size
            if full > seq.table.committed:
                if caching:
                    extend_block_hashes(seq.block_hashes, seq.token_ids, size)
                pool.commit_full_blocks(seq.table, seq.block_hashes, seq.token_ids, full)
            if seq.num_computed == len(seq.token_ids):
                sampling.append(seq)
        return sampling

    # --- the three phases -------------------------------------------------------------------

    def _schedule_decodes(self, plan: StepPlan, budget: int) -> int:
        running, block_size = self.running, self.pool.block_size
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            num_tokens = len(seq.token_ids)
            if num_tokens - seq.num_computed != 1 or seq.loading:
                i += 1
                continue
            # Most decodes fit in the last block: check that before anything costlier.
            if len(seq.table.block_ids) * block_size < num_tokens and not self._make_room(seq, num_tokens, first_victim=i):
                continue  # it preempted itself; whatever was after it shifted down
            plan.scheduled.append((seq, 1))
            plan.num_decodes += 1
            plan.decode_kv_tokens += num_tokens
            seq.scheduled_step = plan.step
            budget -= 1
            i += 1
        return budget

    def _schedule_prefill_chunks(self, plan: StepPlan, budget: int) -> int:
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            remaining = len(seq.token_ids) - seq.num_computed
            if remaining <= 1 or seq.loading:  # decoding (scheduled above, or out of budget), or loading
                i += 1
                continue
            chunk = min(remaining, budget)
            start = seq.num_computed
            if not self._make_room(seq, start + chunk, first_victim=i + 1, plan_step=plan.step):
                # Only scheduled or older sequences hold the rest: take what room there is.
                room = len(seq.table.block_ids) * self.pool.block_size + self.pool.free_blocks * self.pool.block_size
                chunk = min(chunk, room - start)
                if chunk <= 0:
                    i += 1
                    continue
                self.pool.grow(seq.table, start + chunk)
            plan.scheduled.append((seq, chunk))
            plan.prefill_chunks.append((start, chunk))
            seq.scheduled_step = plan.step
            budget -= chunk
            i += 1
        return budget

    def _admit(self, plan: StepPlan, budget: int) -> None:
        pool, waiting = self.pool, self.waiting
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = waiting[0]
            num_tokens = len(seq.token_ids)
            matched = unreferenced = 0
            if pool.enable_prefix_caching:
                hashes = extend_block_hashes(seq.block_hashes, seq.token_ids, pool.block_size)
                # Leave at least one token to compute: the step that computes it samples.
                usable = hashes[: (num_tokens - 1) // pool.block_size]
                matched, unreferenced = pool.cached_prefix(usable)
            start = matched * pool.block_size
            if seq.kv_tokens:
                if pool.blocks_for(seq.kv_tokens) - matched > pool.free_blocks - unreferenced:
                    break
                waiting.popleft()
                self._admit_load(plan, seq, matched)
                continue
            chunk = min(num_tokens - start, budget)
            if pool.blocks_for(start + chunk) - matched > pool.free_blocks - unreferenced:
                break  # wait for blocks to come free; admissions never preempt
            waiting.popleft()
            if matched:
                pool.acquire_prefix(seq.table, seq.block_hashes[:matched])
            pool.grow(seq.table, start + chunk)
            seq.num_computed = start
            if seq.cached_tokens is None:
                seq.cached_tokens = start
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            plan.scheduled.append((seq, chunk))
            if chunk == 1:
                # One token (say, all but the last prompt token was cached): a decode's cost.
                plan.num_decodes += 1
                plan.decode_kv_tokens += num_tokens
            else:
                plan.prefill_chunks.append((start, chunk))
            seq.scheduled_step = plan.step
            budget -= chunk

    def _admit_load(self, plan: StepPlan, seq: Sequence, matched: int) -> None:
        """Admit a sequence whose KV arrives by transfer: blocks for it, no compute."""
        pool = self.pool
        if matched:
            pool.acquire_prefix(seq.table, seq.block_hashes[:matched])
        pool.grow(seq.table, seq.kv_tokens)
        seq.num_computed = matched * pool.block_size
        if seq.cached_tokens is None:
            seq.cached_tokens = seq.num_computed
        seq.loading = True
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        plan.loads.append(seq)

    # --- blocks and preemption ----------------------------------------------------------------

    def _make_room(self, seq: Sequence, num_tokens: int, first_victim: int, plan_step: int | None = None) -> bool:
        """Grow `seq`'s blocks to hold `num_tokens`, preempting the most recently admitted
        running sequences at index `first_victim` or later (skipping those scheduled in
        `plan_step`) until it fits. Returns False if `seq` preempted itself (decodes) or no
        victim is left (prefill chunks)."""
        pool = self.pool
        while True:
            try:
                pool.grow(seq.table, num_tokens)
                return True
            except OutOfBlocksError:
                victim = self._newest_victim(first_victim, plan_step)
                if victim is None:
                    return False
                self._preempt(victim)
                if victim is seq:
                    return False

    def _newest_victim(self, first_victim: int, plan_step: int | None) -> Sequence | None:
        running = self.running
        for index in range(len(running) - 1, first_victim - 1, -1):
            if running[index].loading:  # a transfer is writing into its blocks
                continue
            if plan_step is None or running[index].scheduled_step != plan_step:
                return running[index]
        return None

    def _preempt(self, victim: Sequence) -> None:
        self.running.remove(victim)
        self.pool.release(victim.table)
        victim.num_computed = 0
        victim.status = SequenceStatus.WAITING
        self.waiting.appendleft(victim)
        self.preemptions += 1
