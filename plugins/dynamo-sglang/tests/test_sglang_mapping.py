"""dynamo requests as SGLang's sampling parameters, and SGLang's outputs, loads and
disaggregation parameters in dynamo's terms. Pure mapping code: runs without SGLang."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dynamo_core.errors import WorkerConfigError
from dynamo_core.protocols.engine import (
    DisaggParams,
    FinishReason,
    GuidedDecoding,
    KvTransferParams,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo_sglang import disagg
from dynamo_sglang.load import load_metrics
from dynamo_sglang.outputs import engine_output
from dynamo_sglang.sampling import UnsupportedRequestError, logprob_fields, sampling_params


def request(**fields) -> PreprocessedRequest:
    fields.setdefault("stop", StopConditions(max_tokens=16))
    return PreprocessedRequest(request_id="r1", model="m", token_ids=[1, 2, 3], **fields)


def test_only_what_the_request_sets_reaches_sglang():
    assert sampling_params(request()) == {"max_new_tokens": 16, "ignore_eos": False}


def test_sampling_options_map_to_sglangs_names():
    params = sampling_params(request(
        sampling=SamplingOptions(temperature=0.5, top_p=0.9, top_k=40, min_p=0.05, seed=7, presence_penalty=0.1,
                                 frequency_penalty=0.2, repetition_penalty=1.1),
        stop=StopConditions(max_tokens=8, stop_token_ids=[2, 9], ignore_eos=True)))
    assert params == {"max_new_tokens": 8, "ignore_eos": True, "stop_token_ids": [2, 9], "temperature": 0.5,
                      "top_p": 0.9, "top_k": 40, "min_p": 0.05, "sampling_seed": 7, "presence_penalty": 0.1,
                      "frequency_penalty": 0.2, "repetition_penalty": 1.1}


@pytest.mark.parametrize("top_k", [-1, 0])
def test_top_k_without_a_limit_leaves_sglangs_default(top_k):
    assert "top_k" not in sampling_params(request(sampling=SamplingOptions(top_k=top_k)))


def test_min_tokens_is_refused_with_a_reason():
    with pytest.raises(UnsupportedRequestError, match="min_tokens=3 is not supported by the sglang engine"):
        sampling_params(request(stop=StopConditions(max_tokens=8, min_tokens=3)))


def test_logprobs_are_request_fields_for_the_output_only():
    assert logprob_fields(request()) == {}
    assert logprob_fields(request(output=OutputOptions(logprobs=0))) == {
        "return_logprob": True, "top_logprobs_num": 0, "logprob_start_len": -1}
    assert logprob_fields(request(output=OutputOptions(logprobs=3)))["top_logprobs_num"] == 3


@pytest.mark.parametrize(("guided", "expected"), [
    (GuidedDecoding(json_schema={"type": "integer"}), {"json_schema": json.dumps({"type": "integer"})}),
    (GuidedDecoding(json_object=True), {"json_schema": json.dumps({"type": "object"})}),
    (GuidedDecoding(regex="[0-9]+"), {"regex": "[0-9]+"}),
    (GuidedDecoding(choice=["yes", "no"]), {"ebnf": 'root ::= "yes" | "no"'}),
    (GuidedDecoding(grammar='root ::= "a"'), {"ebnf": 'root ::= "a"'}),
])
def test_guided_decoding_becomes_sglangs_grammar_constraint(guided, expected):
    params = sampling_params(request(guided=guided))
    assert {k: v for k, v in params.items() if k in ("json_schema", "regex", "ebnf")} == expected


def chunk(ids, finish=None, **meta):
    return {"output_ids": ids, "meta_info": {"id": "r1", "finish_reason": finish, "prompt_tokens": 40,
                                             "completion_tokens": 0, "cached_tokens": 32, **meta}}


def test_a_stream_becomes_deltas_with_counts_on_the_first():
    first = engine_output(chunk([5, 6]), first=True, top_logprobs=None)
    last = engine_output(chunk([7], {"type": "length", "length": 3}), first=False, top_logprobs=None)
    assert (first.token_ids, first.prompt_tokens, first.cached_tokens, first.finish_reason) == ([5, 6], 40, 32, None)
    assert (last.token_ids, last.prompt_tokens, last.finish_reason) == ([7], None, FinishReason.LENGTH)


@pytest.mark.parametrize(("reason", "expected"), [
    ({"type": "stop", "matched": 2}, FinishReason.STOP),
    ({"type": "length", "length": 8}, FinishReason.LENGTH),
    ({"type": "something_new"}, FinishReason.STOP),
])
def test_finish_reasons(reason, expected):
    assert engine_output(chunk([1], reason), first=False, top_logprobs=None).finish_reason == expected


def test_an_abort_is_an_error_with_sglangs_message():
    out = engine_output(chunk([], {"type": "abort", "message": "prompt too long", "status_code": 400}),
                        first=False, top_logprobs=None)
    assert out.finish_reason == FinishReason.ERROR and out.error == "SGLang aborted the request: prompt too long"


def test_logprobs_and_top_logprobs_of_the_chunks_tokens():
    meta = {"output_token_logprobs": [[-0.5, 5, None], [-0.25, 6, None]],
            "output_top_logprobs": [[[-0.5, 5, None], [-1.5, 9, None], [-3.0, 4, None]],
                                    [[-0.25, 6, None], [-2.0, 3, None], [-4.0, 8, None]]]}
    out = engine_output(chunk([5, 6], **meta), first=True, top_logprobs=2)
    assert out.logprobs == [-0.5, -0.25]
    assert [[(t.token_id, t.logprob) for t in pos] for pos in out.top_logprobs] == [[(5, -0.5), (9, -1.5)], [(6, -0.25), (3, -2.0)]]
    assert engine_output(chunk([5, 6], **meta), first=True, top_logprobs=None).logprobs is None


def snapshot(running=0, waiting=0, used=0, total=16000):
    return SimpleNamespace(num_running_reqs=running, num_waiting_reqs=waiting, num_used_tokens=used,
                           max_total_num_tokens=total)


def test_load_from_sglangs_snapshot_in_pages():
    metrics = load_metrics("w", [snapshot(running=2, used=40)], in_flight=3, page_size=16, total_pages=0)
    assert (metrics.running_requests, metrics.waiting_requests) == (2, 1)
    assert (metrics.active_kv_blocks, metrics.total_kv_blocks) == (3, 1000)  # 40 tokens hold 3 pages


def test_a_stale_snapshot_is_capped_by_the_requests_in_flight():
    metrics = load_metrics("w", [snapshot(running=4, used=400)], in_flight=0, page_size=16, total_pages=1000)
    assert (metrics.running_requests, metrics.waiting_requests, metrics.active_kv_blocks) == (0, 0, 0)
    empty = load_metrics("w", [], in_flight=2, page_size=16, total_pages=1000)
    assert (empty.running_requests, empty.waiting_requests, empty.total_kv_blocks) == (0, 2, 1000)


def disagg_request(phase: str, engine_params: dict | None) -> PreprocessedRequest:
    kv = KvTransferParams(worker_id="p", hold_id="r1", num_tokens=3, block_size=16, engine_params=engine_params)
    return request(disagg=DisaggParams(phase=phase, kv=kv))


def test_bootstrap_parameters_reach_both_halves():
    params = {"bootstrap_host": "10.0.0.2", "bootstrap_port": 25001, "bootstrap_room": 2**62 + 5}
    for phase in ("prefill", "decode"):
        assert disagg.request_bootstrap(disagg_request(phase, params)) == params
    assert disagg.request_bootstrap(request()) == {}
    with pytest.raises(ValueError, match="decode request without SGLang's bootstrap_room"):
        disagg.request_bootstrap(disagg_request("decode", {"bootstrap_host": "h", "bootstrap_port": 1}))


def test_roles_set_sglangs_disaggregation_mode_with_nixl():
    assert disagg.role_overrides("agg", set(), "127.0.0.1") == {}
    decode = disagg.role_overrides("decode", set(), "127.0.0.1")
    assert decode == {"disaggregation_mode": "decode", "disaggregation_transfer_backend": "nixl"}
    prefill = disagg.role_overrides("prefill", {"--disaggregation-transfer-backend"}, "127.0.0.1")
    assert prefill["disaggregation_mode"] == "prefill" and "disaggregation_transfer_backend" not in prefill
    assert disagg.PORT_RANGE[0] <= prefill["disaggregation_bootstrap_port"] < disagg.PORT_RANGE[1]
    with pytest.raises(WorkerConfigError):
        disagg.role_overrides("encode", set(), "127.0.0.1")
    assert disagg.bootstrap_info("127.0.0.1", 25001) == {"bootstrap_host": "127.0.0.1", "bootstrap_port": 25001}
