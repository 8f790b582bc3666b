"""Against the installed vLLM itself: its KV event encoding, its engine-argument parser and
its structured-output parameters.

Skipped where vLLM is not installed (CI); the parser check also needs vLLM to find a device.
"""

from __future__ import annotations

import argparse

import msgspec
import pytest

kv_events = pytest.importorskip("vllm.distributed.kv_events")

from dynamo_core.cli import options as core_options  # noqa: E402
from dynamo_core.protocols.engine import GuidedDecoding, PreprocessedRequest, StopConditions  # noqa: E402
from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvRemoved, KvStored  # noqa: E402
from dynamo_vllm.availability import VllmUnavailableError  # noqa: E402
from dynamo_vllm.kv_events import KvEventTranslator, decode_batch  # noqa: E402
from dynamo_vllm.options import mirror_vllm_options, vllm_argv  # noqa: E402
from dynamo_vllm.sampling import sampling_kwargs, structured_output_kwargs  # noqa: E402


def test_batches_encoded_by_vllm_decode_here():
    batch = kv_events.KVEventBatch(ts=1.5, events=[
        kv_events.BlockStored(block_hashes=[11, 12], parent_block_hash=None, token_ids=list(range(32)),
                              block_size=16, lora_id=None, medium="GPU", lora_name=None,
                              extra_keys=[None, None], group_idx=0),
        kv_events.BlockStored(block_hashes=[b"\x01" * 32], parent_block_hash=12, token_ids=list(range(32, 48)),
                              block_size=16, lora_id=None, medium="GPU", lora_name=None),
        kv_events.BlockRemoved(block_hashes=[11], medium="GPU", group_idx=0),
        kv_events.AllBlocksCleared(),
    ], data_parallel_rank=0)
    payload = msgspec.msgpack.Encoder().encode(batch)  # what ZmqEventPublisher sends
    assert KvEventTranslator(block_size=16).translate(decode_batch(payload)) == [
        KvStored(parent_hash=None, blocks=[KvBlock(11, list(range(16))), KvBlock(12, list(range(16, 32)))]),
        KvStored(parent_hash=12, blocks=[KvBlock(int.from_bytes(b"\x01" * 8, "big"), list(range(32, 48)))]),
        KvRemoved(block_hashes=[11]),
        KvCleared(),
    ]


def test_vllms_own_parser_round_trips_through_dynamo_serve():
    from dynamo_vllm.engine_args import engine_arg_parser, engine_args

    try:
        source = engine_arg_parser()
    except VllmUnavailableError as exc:
        pytest.skip(str(exc))
    serve = argparse.ArgumentParser()
    serve.add_argument("--model")
    group = serve.add_argument_group(core_options.ENGINE_GROUP_TITLE)
    added = mirror_vllm_options(source, group)
    assert {"--gpu-memory-utilization", "--max-model-len", "--enforce-eager", "--block-size",
            "--tensor-parallel-size", "--kv-cache-memory-bytes"} <= set(added)
    ns = serve.parse_args(["--gpu-memory-utilization", "0.3", "--max-model-len", "2k", "--enforce-eager",
                           "--block-size", "32", "-tp", "1", "--kv-cache-memory-bytes", "1G",
                           "--no-enable-prefix-caching", "--hf-overrides", '{"rope_theta": 10000}'])
    passed = core_options.child_args(serve, ns, serve)
    worker_ns = serve.parse_args(passed)
    argv = vllm_argv(core_options.group_namespace(serve, core_options.ENGINE_GROUP_TITLE, worker_ns))
    args = engine_args("/models/m", argv)
    assert args.model == "/models/m" and args.gpu_memory_utilization == 0.3 and args.max_model_len == 2000
    assert args.enforce_eager is True and args.block_size == 32 and args.tensor_parallel_size == 1
    assert args.kv_cache_memory_bytes == 2**30 and args.enable_prefix_caching is False
    assert args.hf_overrides == {"rope_theta": 10000}


@pytest.mark.parametrize("guided", [
    GuidedDecoding(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}}),
    GuidedDecoding(json_object=True),
    GuidedDecoding(regex="[0-9]+"),
    GuidedDecoding(choice=["yes", "no"]),
    GuidedDecoding(grammar='root ::= "a" | "b"'),
])
def test_structured_output_constraints_build_vllms_sampling_params(guided):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    request = PreprocessedRequest(request_id="r", model="m", token_ids=[1, 2], stop=StopConditions(max_tokens=4),
                                  guided=guided)
    params = SamplingParams(**sampling_kwargs(request), output_kind=RequestOutputKind.DELTA,
                            structured_outputs=StructuredOutputsParams(**structured_output_kwargs(request)))
    assert params.structured_outputs is not None
