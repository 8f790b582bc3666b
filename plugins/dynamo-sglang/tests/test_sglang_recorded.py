"""The plugin's mappings against what SGLang 0.5.15 really emitted on an H200.

`fixtures/sglang_0.5.15.json` was recorded by `tests/gpu/record_sglang_fixtures.py` (the random
Llama, page size 16, token ids in, incremental streaming): four `async_generate` streams with
their meta_info (greedy with top-3 logprobs; the same prompt again, a prefix-cache hit; a
stop-token finish; an abort mid-stream), the KV-event batches SGLang's replay socket answered
(`[b"", seq, payload]`), its load snapshot, the engine facts the card reads, and the options
of its server-argument parser.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from dynamo_core.cli import options as core_options
from dynamo_core.engines.kv_mirror import KvCacheMirror
from dynamo_core.protocols.engine import FinishReason
from dynamo_core.protocols.kv_events import KvCleared, KvStored
from dynamo_sglang.kv_events import KvEventTranslator, decode_batch
from dynamo_sglang.load import load_metrics
from dynamo_sglang.options import OWNED_FLAGS, mirror_sglang_options, sglang_argv
from dynamo_sglang.outputs import engine_output

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "sglang_0.5.15.json").read_text())
PAGE = RECORDED["engine"]["page_size"]


def deltas(name: str, top_logprobs: int | None = None) -> list:
    chunks = RECORDED[name]["chunks"]
    return [engine_output(c, first=i == 0, top_logprobs=top_logprobs) for i, c in enumerate(chunks)]


def test_a_recorded_stream_adds_up_to_sglangs_completion_tokens():
    for name in ("stream_logprobs", "stream_cached"):
        outs = deltas(name)
        last_meta = RECORDED[name]["chunks"][-1]["meta_info"]
        assert sum(len(o.token_ids) for o in outs) == last_meta["completion_tokens"] == 8
        assert [o.finish_reason for o in outs] == [None] * 7 + [FinishReason.LENGTH]
        assert outs[0].prompt_tokens == 40 and all(o.prompt_tokens is None for o in outs[1:])


def test_the_repeated_prompt_reports_sglangs_cached_pages():
    assert deltas("stream_logprobs")[0].cached_tokens == 0
    assert deltas("stream_cached")[0].cached_tokens == 32  # two full pages of the 40-token prompt


def test_greedy_logprobs_and_top_logprobs_from_sglang():
    outs = deltas("stream_logprobs", top_logprobs=3)
    tokens = [t for o in outs for t in o.token_ids]
    assert tokens == [t for o in deltas("stream_cached") for t in o.token_ids]  # greedy twice, same tokens
    for out in outs:
        assert len(out.logprobs) == len(out.token_ids) == len(out.top_logprobs)
        for token, chosen, top in zip(out.token_ids, out.logprobs, out.top_logprobs):
            assert len(top) == 3 and [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
            # Greedy: the sampled token is a most likely one (the random model has ties).
            assert chosen == top[0].logprob and token in {t.token_id for t in top if t.logprob == chosen}


def test_stop_token_and_abort_finishes():
    stop = deltas("stream_stop")
    assert [o.finish_reason for o in stop] == [FinishReason.STOP]
    abort = deltas("stream_abort")
    assert abort[-1].finish_reason == FinishReason.ERROR and abort[-1].error == "SGLang aborted the request: Aborted"
    assert all(o.finish_reason is None for o in abort[:-1])


def replayed_batches() -> list[bytes]:
    # [frames at the DEALER, seq, payload]; the last one is the end marker (seq -1, empty payload)
    answered = RECORDED["kv_replay_from_0"]
    assert all(frames == 3 for frames, _, _ in answered)
    return [base64.b64decode(payload) for _, _, payload in answered if payload]


def sglang_page_hash(tokens: list[int], prior: bytes | None) -> tuple[int, bytes]:
    digest = hashlib.sha256((prior or b"") + struct.pack(f"<{len(tokens)}I", *tokens)).digest()
    return int.from_bytes(digest[:8], "big", signed=True), digest


def test_recorded_kv_events_translate_to_the_prompts_page_chain():
    translator = KvEventTranslator(PAGE)
    events = [e for payload in replayed_batches() for e in translator.translate(decode_batch(payload))]
    assert isinstance(events[0], KvCleared)  # SGLang clears at start-up
    stored = [e for e in events if isinstance(e, KvStored)]
    blocks = [b for e in stored for b in e.blocks]
    prompt = RECORDED["stream_logprobs"]["input_ids"]
    assert [b.token_ids for b in blocks[:2]] == [prompt[:16], prompt[16:32]]
    # Each page's hash is SGLang's sha256 chain over its tokens, folded to unsigned 64 bits,
    # and each event names the page before it as its parent.
    prior = None
    for block, event in zip(blocks, stored):
        expected, prior = sglang_page_hash(block.token_ids, prior)
        assert block.block_hash == expected & (2**64 - 1)
    assert stored[1].parent_hash == blocks[0].block_hash
    mirror = KvCacheMirror()
    mirror.apply(events)
    assert [[b.block_hash for b in s.blocks] for s in mirror.snapshot()] == [[b.block_hash for b in blocks]]


def test_sglangs_load_snapshot_in_pages():
    snapshots = [SimpleNamespace(**{"num_running_reqs": 0, "num_waiting_reqs": 0, "num_used_tokens": 0, **s})
                 for s in RECORDED["load_snapshots"]]
    metrics = load_metrics("w", snapshots, in_flight=1, page_size=PAGE, total_pages=0)
    assert metrics.total_kv_blocks == RECORDED["engine"]["max_total_num_tokens"] // PAGE
    assert (metrics.running_requests, metrics.waiting_requests, metrics.active_kv_blocks) == (0, 1, 0)


def sglang_parser() -> argparse.ArgumentParser:
    """SGLang's server-argument parser rebuilt from the recorded options (flags, arity, choices)."""
    parser = argparse.ArgumentParser(add_help=False)
    types = {"str": str, "int": int, "float": float}
    for action in RECORDED["parser_actions"]:
        flags, kind = action["flags"], action["action"]
        if kind == "_HelpAction":
            continue
        if kind == "BooleanOptionalAction":
            parser.add_argument(flags[0], action=argparse.BooleanOptionalAction, dest=action["dest"])
        elif action["nargs"] == 0:
            parser.add_argument(*flags, action="store_true", dest=action["dest"])
        else:
            parser.add_argument(*flags, dest=action["dest"], nargs=action["nargs"], choices=action["choices"],
                                type=types.get(action["type"] or "str", str))
    return parser


def test_every_sglang_server_argument_is_mirrored_but_those_dynamo_owns():
    parser = argparse.ArgumentParser(prog="dynamo worker")
    parser.add_argument("--model")
    group = parser.add_argument_group(core_options.ENGINE_GROUP_TITLE)
    added = mirror_sglang_options(sglang_parser(), group)
    recorded = {a["flags"][0] for a in RECORDED["parser_actions"] if a["action"] != "_HelpAction"}
    assert not set(added) & OWNED_FLAGS
    assert {"--mem-fraction-static", "--context-length", "--page-size", "--attention-backend", "--sampling-backend",
            "--grammar-backend", "--tp-size", "--max-running-requests", "--chunked-prefill-size",
            "--disable-cuda-graph", "--disaggregation-transfer-backend", "--max-total-tokens"} <= set(added)
    assert len(added) >= len(recorded - OWNED_FLAGS) - 5  # all but the few whose flags a core option takes
    ns = parser.parse_args(["--model", "/m", "--mem-fraction-static", "0.3", "--attention-backend", "triton",
                            "--disable-cuda-graph", "--lora-paths", "a", "b"])
    argv = sglang_argv(ns)
    back = sglang_parser().parse_args(["--model-path", "/m", *argv])
    assert (back.mem_fraction_static, back.attention_backend, back.disable_cuda_graph, back.lora_paths) == (
        0.3, "triton", True, ["a", "b"])


@pytest.mark.parametrize("flag", sorted(OWNED_FLAGS - {"--dp", "--data-parallel-size", "--model"}))
def test_owned_flags_are_sglang_flags(flag):
    """Each flag dynamo owns exists in SGLang 0.5.15 (a rename would leave it user-settable)."""
    assert any(flag in a["flags"] for a in RECORDED["parser_actions"])
