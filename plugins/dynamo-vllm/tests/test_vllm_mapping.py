"""Requests into vLLM's sampling parameters, vLLM's deltas into dynamo's, and load reports."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field

import pytest

from dynamo_core.protocols.engine import (
    EngineOutput,
    FinishReason,
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
    TokenLogprob,
)
from dynamo_vllm.load import SchedulerLoad
from dynamo_vllm.outputs import engine_output
from dynamo_vllm.sampling import sampling_kwargs, structured_output_kwargs


def request(**kw) -> PreprocessedRequest:
    base = dict(request_id="r1", model="m", token_ids=[1, 2, 3], stop=StopConditions(max_tokens=16))
    base.update(kw)
    return PreprocessedRequest(**base)


# --- sampling --------------------------------------------------------------------------------


def test_only_what_the_request_sets_reaches_vllm():
    assert sampling_kwargs(request()) == {
        "n": 1, "max_tokens": 16, "min_tokens": 0, "ignore_eos": False, "detokenize": False,
    }


def test_sampling_stop_and_logprob_options_map_one_to_one():
    kwargs = sampling_kwargs(request(
        sampling=SamplingOptions(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=11,
                                 presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.1),
        stop=StopConditions(max_tokens=128, stop_token_ids=[2, 32000], min_tokens=4, ignore_eos=True),
        output=OutputOptions(logprobs=3),
    ))
    assert kwargs == {
        "n": 1, "max_tokens": 128, "min_tokens": 4, "ignore_eos": True, "detokenize": False,
        "stop_token_ids": [2, 32000], "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "seed": 11, "presence_penalty": 0.5, "frequency_penalty": 0.25, "repetition_penalty": 1.1,
        "logprobs": 3,
    }


def test_logprobs_of_the_sampled_token_only_is_zero_alternatives():
    assert sampling_kwargs(request(output=OutputOptions(logprobs=0)))["logprobs"] == 0


# --- outputs ---------------------------------------------------------------------------------


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    index: int = 0
    text: str = ""


@dataclass
class RequestOutput:
    outputs: list[Completion]
    prompt_token_ids: list[int] | None = field(default_factory=lambda: [1, 2, 3, 4, 5])
    num_cached_tokens: int | None = 0
    finished: bool = False


def test_first_delta_carries_prompt_and_cached_token_counts():
    out = engine_output(RequestOutput([Completion([7])], num_cached_tokens=4), first=True, top_logprobs=None)
    assert out == EngineOutput(token_ids=[7], prompt_tokens=5, cached_tokens=4)
    later = engine_output(RequestOutput([Completion([8, 9])]), first=False, top_logprobs=None)
    assert later == EngineOutput(token_ids=[8, 9])


@pytest.mark.parametrize(
    "reason, ours",
    [("stop", FinishReason.STOP), ("length", FinishReason.LENGTH), ("abort", FinishReason.CANCELLED),
     ("error", FinishReason.ERROR), ("repetition", FinishReason.STOP), (None, None)],
)
def test_finish_reasons(reason, ours):
    out = engine_output(RequestOutput([Completion([5], finish_reason=reason)]), first=False, top_logprobs=None)
    assert out.finish_reason == ours


def test_a_final_delta_may_have_no_tokens():
    out = engine_output(RequestOutput([Completion([], finish_reason="stop")]), first=False, top_logprobs=None)
    assert out == EngineOutput(token_ids=[], finish_reason=FinishReason.STOP)


def test_logprobs_give_the_sampled_token_and_the_top_alternatives():
    # Position 1: the sampled token 11 is itself the most likely. Position 2: sampled token 30
    # has rank 5, outside the top 2, so vLLM lists it beside the top 2 and it is no alternative.
    positions = [
        {11: Logprob(-0.1, 1), 12: Logprob(-2.5, 2)},
        {30: Logprob(-4.0, 5), 21: Logprob(-0.5, 1), 22: Logprob(-1.5, 2)},
    ]
    out = engine_output(RequestOutput([Completion([11, 30], logprobs=positions)]), first=False, top_logprobs=2)
    assert out.logprobs == [-0.1, -4.0]
    assert out.top_logprobs == [
        [TokenLogprob(11, -0.1), TokenLogprob(12, -2.5)],
        [TokenLogprob(21, -0.5), TokenLogprob(22, -1.5)],
    ]


def test_logprobs_without_alternatives_and_when_not_asked():
    positions = [{11: Logprob(-0.3, 1)}]
    asked = engine_output(RequestOutput([Completion([11], logprobs=positions)]), first=False, top_logprobs=0)
    assert asked.logprobs == [-0.3] and asked.top_logprobs == [[]]
    not_asked = engine_output(RequestOutput([Completion([11], logprobs=positions)]), first=False, top_logprobs=None)
    assert not_asked.logprobs is None and not_asked.top_logprobs is None


def test_a_sampled_token_missing_from_its_position_reads_as_minus_infinity():
    out = engine_output(RequestOutput([Completion([99], logprobs=[{1: Logprob(-0.2, 1)}])]), first=False, top_logprobs=1)
    assert math.isinf(out.logprobs[0]) and out.top_logprobs == [[TokenLogprob(1, -0.2)]]


# --- load ------------------------------------------------------------------------------------


@dataclass
class Stats:
    num_running_reqs: int
    num_waiting_reqs: int
    kv_cache_usage: float


def test_load_follows_the_scheduler_and_the_requests_in_flight():
    load = SchedulerLoad(total_kv_blocks=1000)
    idle = load.metrics("w")
    assert (idle.running_requests, idle.waiting_requests, idle.active_kv_blocks, idle.total_kv_blocks) == (0, 0, 0, 1000)

    load.in_flight = 5  # accepted, not yet seen by a scheduler step: waiting
    assert (load.metrics("w").running_requests, load.metrics("w").waiting_requests) == (0, 5)

    load.record(Stats(num_running_reqs=4, num_waiting_reqs=1, kv_cache_usage=0.25))
    report = load.metrics("w")
    assert (report.running_requests, report.waiting_requests, report.active_kv_blocks) == (4, 1, 250)

    load.in_flight = 2  # two finished since that step: no more running than in flight
    report = load.metrics("w")
    assert (report.running_requests, report.waiting_requests) == (2, 0)

    load.in_flight = 0  # all done: nothing active, whatever the last step said
    assert load.metrics("w").active_kv_blocks == 0
    load.record(None)  # steps without statistics change nothing
    assert load.metrics("w").total_kv_blocks == 1000


@pytest.mark.parametrize(("guided", "expected"), [
    (None, {}),
    (GuidedDecoding(json_schema={"type": "object"}), {"json": {"type": "object"}}),
    (GuidedDecoding(json_object=True), {"json_object": True}),
    (GuidedDecoding(regex="a+"), {"regex": "a+"}),
    (GuidedDecoding(choice=["x", "y"]), {"choice": ["x", "y"]}),
    (GuidedDecoding(grammar="root ::= x"), {"grammar": "root ::= x"}),
])
def test_structured_output_maps_to_vllms_structured_outputs_params(guided, expected):
    request = PreprocessedRequest(request_id="r", model="m", token_ids=[1], stop=StopConditions(max_tokens=1),
                                  guided=guided)
    assert structured_output_kwargs(request) == expected


def test_disagg_side_channel_gets_a_free_port_unless_the_user_set_one(monkeypatch):
    from dynamo_vllm import disagg

    monkeypatch.delenv(disagg.SIDE_CHANNEL_PORT_ENV, raising=False)
    monkeypatch.delenv(disagg.SIDE_CHANNEL_HOST_ENV, raising=False)
    host, port = disagg.configure_side_channel("10.1.2.3")
    assert (host, port) == ("10.1.2.3", int(os.environ[disagg.SIDE_CHANNEL_PORT_ENV])) and port > 0
    monkeypatch.setenv(disagg.SIDE_CHANNEL_PORT_ENV, "7777")
    monkeypatch.delenv(disagg.SIDE_CHANNEL_HOST_ENV)
    host, port = disagg.configure_side_channel("0.0.0.0")  # a wildcard: peers get this host's address
    assert port == 7777 and host == socket.gethostbyname(socket.gethostname())


def test_disagg_kv_bytes_per_block_and_reports_without_parameters():
    from dynamo_vllm import disagg

    # Llama-3.1-8B in bf16: 32 layers, 8 KV heads of 128, block of 16 tokens -> 2 MiB.
    assert disagg.kv_bytes_per_block(32, 8, 128, 2, 16) == 2 * 1024 * 1024
    assert disagg.pull_report(None, 100).recomputed
    assert disagg.prefill_result(None, worker_id="w", request_id="r", prompt_tokens=3, block_size=16) is None


def test_disagg_keeps_a_users_kv_transfer_config_with_the_nixl_connector_and_refuses_another():
    from types import SimpleNamespace

    from dynamo_core.errors import WorkerConfigError
    from dynamo_vllm import disagg

    made = disagg.transfer_config(None, SimpleNamespace)
    assert (made.kv_connector, made.kv_role) == ("NixlConnector", "kv_both")
    given = SimpleNamespace(kv_connector=None, kv_role=None, kv_connector_extra_config={"backends": ["UCX"]})
    kept = disagg.transfer_config(given, SimpleNamespace)
    assert kept is given and (kept.kv_connector, kept.kv_role) == ("NixlConnector", "kv_both")
    assert kept.kv_connector_extra_config == {"backends": ["UCX"]}
    with pytest.raises(WorkerConfigError, match="LMCacheConnectorV1"):
        disagg.transfer_config(SimpleNamespace(kv_connector="LMCacheConnectorV1", kv_role="kv_both"), SimpleNamespace)
