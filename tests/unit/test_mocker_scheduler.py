"""The mocker's scheduler, stepped by hand: budgets, chunked prefill, prefix reuse, preemption."""

from __future__ import annotations

from dynamo_core.engines.mocker.kv_cache import BlockPool
from dynamo_core.engines.mocker.scheduler import Scheduler, Sequence, SequenceStatus, StepPlan


def _seq(prompt_len: int, first_token: int = 3) -> Sequence:
    return Sequence(token_ids=list(range(first_token, first_token + prompt_len)), prompt_len=prompt_len)


def _step(scheduler: Scheduler, max_output: dict[int, int] | None = None) -> tuple[StepPlan, list[Sequence]]:
    """One step, as the engine runs it: every sampling sequence gets a token; those that reach
    their output length (default 1000) finish."""
    plan = scheduler.schedule()
    sampling = scheduler.complete(plan)
    for seq in sampling:
        seq.token_ids.append(7)
        if len(seq.token_ids) - seq.prompt_len >= (max_output or {}).get(id(seq), 1000):
            scheduler.finish(seq)
    return plan, sampling


def _tokens_scheduled(plan: StepPlan) -> int:
    return sum(n for _, n in plan.scheduled)


def test_chunked_prefill_respects_token_budget():
    scheduler = Scheduler(BlockPool(num_blocks=64, block_size=4), max_num_seqs=8, max_num_batched_tokens=10)
    seq = _seq(25)
    scheduler.add(seq)
    chunks = []
    for _ in range(3):
        plan, sampling = _step(scheduler)
        chunks.append(plan.prefill_chunks)
    assert chunks == [[(0, 10)], [(10, 10)], [(20, 5)]]
    assert sampling == [seq] and len(seq.token_ids) == 26  # the first token comes with the last chunk
    # Blocks are taken as chunks need them, not for the whole prompt up front.
    assert seq.num_computed == 25 and len(seq.table.block_ids) == 7


def test_decodes_go_first_and_share_the_budget_with_prefill_chunks():
    scheduler = Scheduler(BlockPool(num_blocks=256, block_size=4), max_num_seqs=8, max_num_batched_tokens=16)
    decoders = [_seq(4, first_token=100 * i) for i in range(3)]
    for seq in decoders:
        scheduler.add(seq)
    _step(scheduler)  # all three prompts prefilled at once (12 tokens)
    long_prompt = _seq(100, first_token=1000)
    scheduler.add(long_prompt)
    for _ in range(4):
        plan, _ = _step(scheduler)
        assert plan.num_decodes == 3 and [seq for seq, n in plan.scheduled[:3]] == decoders
        assert _tokens_scheduled(plan) == 16  # 3 decodes + a 13-token chunk
    assert long_prompt.num_computed == 4 * 13


def test_max_num_seqs_caps_running_sequences():
    scheduler = Scheduler(BlockPool(num_blocks=256, block_size=4), max_num_seqs=2, max_num_batched_tokens=1000)
    seqs = [_seq(8, first_token=100 * i) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    limits = {id(seqs[0]): 2, id(seqs[1]): 2}
    _step(scheduler, limits)
    assert scheduler.running == seqs[:2] and list(scheduler.waiting) == [seqs[2]]
    _step(scheduler, limits)  # both finish
    plan, _ = _step(scheduler, limits)
    assert scheduler.running == [seqs[2]] and plan.prefill_chunks == [(0, 8)]


def test_admission_reuses_the_longest_cached_prefix_but_computes_the_last_token():
    pool = BlockPool(num_blocks=64, block_size=4)
    scheduler = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=100)
    first = _seq(16)
    scheduler.add(first)
    _step(scheduler, {id(first): 1})
    assert first.status is SequenceStatus.FINISHED and pool.cached_blocks == 4

    same = _seq(16)  # all four blocks cached: only three may be reused
    longer = Sequence(token_ids=list(range(3, 19)) + [50, 51, 52, 53, 54], prompt_len=21)
    diverging = Sequence(token_ids=list(range(3, 9)) + [99] * 10, prompt_len=16)
    for seq in (same, longer, diverging):
        scheduler.add(seq)
    plan, sampling = _step(scheduler)
    assert [(seq.cached_tokens, n) for seq, n in plan.scheduled] == [(12, 4), (16, 5), (4, 12)]
    assert sampling == [same, longer, diverging]
    assert plan.num_decodes == 0 and plan.prefill_chunks == [(12, 4), (16, 5), (4, 12)]


def test_preemption_frees_the_newest_sequence_and_requeues_it_first():
    pool = BlockPool(num_blocks=6, block_size=4)
    scheduler = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=100)
    old, new = _seq(8, first_token=100), _seq(8, first_token=200)
    scheduler.add(old)
    scheduler.add(new)
    queued_later = _seq(4, first_token=300)
    _step(scheduler)  # both prefilled: 4 of 6 blocks; each now holds 9 tokens
    scheduler.add(queued_later)
    _step(scheduler)  # both decode into a third block: 6 of 6; `queued_later` cannot enter
    assert pool.free_blocks == 0 and list(scheduler.waiting) == [queued_later]
    for _ in range(3):
        _step(scheduler)
    assert new.status is SequenceStatus.RUNNING
    _step(scheduler)  # `old` needs a fourth block: `new` gives its three back
    assert scheduler.preemptions == 1
    assert scheduler.running == [old] and list(scheduler.waiting) == [new, queued_later]
    assert new.num_computed == 0 and new.table.block_ids == []
    assert len(new.token_ids) == 8 + 5  # what it generated is kept, and recomputed on return


def test_preempted_sequence_is_recomputed_and_then_continues():
    pool = BlockPool(num_blocks=6, block_size=4)
    scheduler = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=100)
    old, new = _seq(8, first_token=100), _seq(8, first_token=200)
    limits = {id(old): 14, id(new): 12}
    scheduler.add(old)
    scheduler.add(new)
    while scheduler.preemptions == 0:
        _step(scheduler, limits)
    generated_before = len(new.token_ids) - new.prompt_len
    while scheduler.has_work():
        _step(scheduler, limits)
    assert len(old.token_ids) == 8 + 14 and len(new.token_ids) == 8 + 12
    assert generated_before < 12 and pool.active_blocks == 0


def test_admission_waits_for_free_blocks_instead_of_preempting():
    pool = BlockPool(num_blocks=4, block_size=4)
    scheduler = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=100)
    running = _seq(11)
    scheduler.add(running)
    _step(scheduler)
    waiting = _seq(8, first_token=500)
    scheduler.add(waiting)
    plan, _ = _step(scheduler, {id(running): 3})
    assert [seq for seq, _ in plan.scheduled] == [running] and scheduler.preemptions == 0
    plan, _ = _step(scheduler, {id(running): 3})  # `running` finishes this step
    assert [seq for seq, _ in plan.scheduled] == [running]
    plan, _ = _step(scheduler)
    assert [seq for seq, _ in plan.scheduled] == [waiting]


def test_finish_releases_blocks_of_running_and_waiting_sequences():
    pool = BlockPool(num_blocks=16, block_size=4)
    scheduler = Scheduler(pool, max_num_seqs=1, max_num_batched_tokens=100)
    running, waiting = _seq(10), _seq(10, first_token=50)
    scheduler.add(running)
    scheduler.add(waiting)
    _step(scheduler)
    assert pool.active_blocks == 3
    scheduler.finish(waiting)
    scheduler.finish(running)
    assert not scheduler.has_work() and pool.active_blocks == 0
