"""Disaggregated prefill/decode with SGLang workers: SGLang's NIXL transfer moves the KV.

A frontend and an aggregated SGLang worker answer a greedy request whole; then an SGLang
prefill worker and decode worker join (all on one GPU). First the adapters alone: the same
request goes to both workers' request planes at once, as dynamo's `DisaggParams` with the
prefill worker's bootstrap host/port and a fresh room; SGLang's prefill engine computes the
prompt and its decode engine receives the KV over NIXL and generates the same greedy tokens as
the aggregated worker. Then through the frontend, once the aggregated worker has left: the
frontend must split the request itself and answer the same text, split a one-token request
too, and split a structured-output request (or refuse it with a 400 when the grammar backend
is none).

Skipped without SGLang, NIXL or a CUDA GPU.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import msgspec

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed")
pytest.importorskip("nixl", reason="NIXL (the nixl and nixl-cu13 wheels) is not installed")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
openai = pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port  # noqa: E402  (tests/, put on the path by its conftest)
from gpu_support import SGLANG_ENGINE_FLAGS, Child, call, metric, model_dir, wait_for_instances  # noqa: E402
from random_llama import VOCAB_SIZE  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(1200)]


def _wait_for_count(base: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(call(f"{base}/health")["instances"]) != count:
        assert time.monotonic() < deadline, call(f"{base}/health")
        time.sleep(0.5)


def _generate_records(discovery: Path) -> dict[str, object]:
    """The live workers' `generate` instance records by role, read from file discovery."""
    from dynamo_core.protocols.discovery import InstanceRecord
    from dynamo_core.runtime.discovery import _record_decoder

    found = {}
    for path in discovery.rglob("*.rec"):
        record = msgspec.msgpack.decode(_record_decoder.decode(path.read_bytes()).value, type=InstanceRecord)
        if record.endpoint == "generate" and record.model is not None:
            found[record.model.role] = record
    return found


def _bootstrap(prefill_record, prefill_log: str) -> dict:
    card = prefill_record.model
    published = getattr(card, "disagg_bootstrap", None)
    if published:
        return dict(published)
    host, port = re.search(r"SGLang bootstrap server for prefill: (\S+):(\d+)", prefill_log).groups()
    return {"bootstrap_host": host, "bootstrap_port": int(port)}


async def _token_ids(address: str, request) -> list[int]:
    from dynamo_core.protocols.engine import EngineOutput
    from dynamo_core.runtime.request_plane import RequestPlaneClient

    client = RequestPlaneClient()
    tokens: list[int] = []
    async for item in client.call(address, "generate", msgspec.msgpack.encode(request)):
        out = msgspec.msgpack.decode(item, type=EngineOutput)
        assert out.error is None, out.error
        tokens += out.token_ids
    return tokens


def _agg_request(prompt: list[int]):
    from dynamo_core.protocols.engine import PreprocessedRequest, SamplingOptions, StopConditions

    return PreprocessedRequest(request_id="agg-direct", model="m", token_ids=prompt,
                               stop=StopConditions(max_tokens=16, ignore_eos=True), sampling=SamplingOptions(temperature=0.0))


def _split_directly(records: dict, bootstrap: dict, prompt: list[int]) -> tuple[list[int], list[int]]:
    """Send one request to the prefill and the decode worker at once, as the frontend does."""
    from dynamo_core.protocols.engine import (
        DisaggParams, KvTransferParams, PreprocessedRequest, SamplingOptions, StopConditions)

    room = random.randrange(2**63)
    kv = KvTransferParams(worker_id=records["prefill"].instance_id, hold_id="pd-direct", num_tokens=len(prompt),
                          block_size=16, engine_params={**bootstrap, "bootstrap_room": room})

    def half(phase: str) -> PreprocessedRequest:
        return PreprocessedRequest(request_id="pd-direct", model="m", token_ids=prompt,
                                   stop=StopConditions(max_tokens=16, ignore_eos=True),
                                   sampling=SamplingOptions(temperature=0.0), disagg=DisaggParams(phase=phase, kv=kv))

    async def both():
        return await asyncio.gather(_token_ids(records["prefill"].address, half("prefill")),
                                    _token_ids(records["decode"].address, half("decode")))

    return asyncio.run(both())


def _check_one_token_and_structured_output_through_the_split(client, base: str, model: str, records: dict) -> None:
    """With only prefill and decode workers (an SGLang decode engine serves nothing alone): a
    one-token request is split too; a constrained one is split when both workers' cards say
    they apply grammars, and refused with a 400 (not a 503) when the grammar backend is none."""
    split = metric(base, "dynamo_frontend_disagg_requests_total")
    one = client.completions.create(model=model, prompt=list(range(200, 220)), max_tokens=1, temperature=0)
    assert one.usage.completion_tokens == 1
    assert metric(base, "dynamo_frontend_disagg_requests_total") == split + 1
    grammar = all(records[role].model.structured_output for role in ("prefill", "decode"))
    ask = dict(model=model, prompt=list(range(300, 340)), max_tokens=8, temperature=0,
               extra_body={"guided_choice": ["alpha", "beta"]})
    if grammar:
        constrained = client.completions.create(**ask)
        print(f"structured output through the split: {constrained.choices[0].text!r}", flush=True)
        assert constrained.choices[0].text in ("alpha", "beta")
        assert metric(base, "dynamo_frontend_disagg_requests_total") == split + 2
    else:
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(**ask)
        print(f"structured output without a grammar backend: {refused.value.message}", flush=True)
        assert "structured output" in refused.value.message


def test_sglang_prefill_and_decode_workers_move_kv_with_nixl(tmp_path_factory):
    model = model_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("disagg")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp / "discovery"), DYN_NAMESPACE=f"sglpd{port}")
    worker = ["worker", "--engine", "sglang", "--model", str(model), *SGLANG_ENGINE_FLAGS]
    children = [
        Child(["frontend", "--http-port", str(port), "--disagg-min-prompt-tokens", "64"], env, tmp / "frontend.log"),
        Child(worker, env, tmp / "agg.log"),
    ]
    try:
        print(f"aggregated worker up in {wait_for_instances(base, 1, children):.0f} s", flush=True)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)
        prompt = [(t * 7919) % (VOCAB_SIZE - 10) + 5 for t in range(300)]
        ask = dict(model=model.name, prompt=prompt, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
        whole = client.completions.create(**ask)
        whole_ids = asyncio.run(_token_ids(_generate_records(tmp / "discovery")["agg"].address, _agg_request(prompt)))

        children.append(Child([*worker, "--mode", "prefill"], env, tmp / "prefill.log"))
        children.append(Child([*worker, "--mode", "decode"], env, tmp / "decode.log"))
        print(f"prefill and decode workers up in {wait_for_instances(base, 3, children):.0f} s", flush=True)
        records = _generate_records(tmp / "discovery")
        bootstrap = _bootstrap(records["prefill"], children[2].output())
        prefilled, decoded = _split_directly(records, bootstrap, prompt)
        print(f"direct split through {bootstrap}: prefill answered {prefilled}, decode {decoded}; "
              f"aggregated {whole_ids}", flush=True)
        assert decoded == whole_ids  # greedy through SGLang's NIXL-moved KV = greedy computed whole

        children[1].stop()  # the aggregated worker leaves: only the split path remains
        _wait_for_count(base, 2)
        split = client.completions.create(**ask)
        print(f"aggregated: {whole.choices[0].text!r}\nprefill -> NIXL -> decode: {split.choices[0].text!r}")
        print(f"usage: {split.usage.model_dump()}")
        assert split.usage.prompt_tokens == 300 and split.usage.completion_tokens == 16
        assert metric(base, "dynamo_frontend_disagg_requests_total") >= 1
        # Greedy through a transferred KV cache continues as through a computed one.
        assert split.choices[0].text == whole.choices[0].text

        stream = client.chat.completions.create(
            model=model.name, messages=[{"role": "user", "content": "word " * 120}], max_tokens=12,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        print(f"chat stream, split: {len(chunks)} chunks, usage {chunks[-1].usage.model_dump()}, text {text[:40]!r}")
        assert chunks[-1].usage.completion_tokens == 12 and text
        _check_one_token_and_structured_output_through_the_split(client, base, model.name, records)

        for child in children[2:]:  # what SGLang said about its transfer, for the record
            lines = [line for line in child.output().splitlines() if re.search(r"(?i)nixl|bootstrap", line)]
            print(f"{child.log.name}: " + "\n  ".join(lines[:6]))
    finally:
        for child in reversed(children):
            child.stop()
        keep = os.environ.get("DYN_TEST_LOG_DIR")
        if keep:
            for child in children:
                shutil.copy(child.log, Path(keep) / f"sglang-disagg-{child.log.name}")
