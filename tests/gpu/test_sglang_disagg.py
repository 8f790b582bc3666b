"""Disaggregated prefill/decode with SGLang workers: SGLang's NIXL transfer moves the KV.

A frontend and an aggregated SGLang worker answer a greedy request whole; then an SGLang
prefill worker and decode worker join (all on one GPU) and the aggregated worker leaves, so the
same request is split: the frontend sends it to both at once with the prefill worker's
bootstrap host/port and a fresh room, SGLang's prefill engine computes the prompt and its
decode engine receives the KV over NIXL and generates. The texts must agree, and the frontend
must have counted a disaggregated request with no fallback.

Skipped without SGLang, NIXL or a CUDA GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed")
pytest.importorskip("nixl", reason="NIXL (the nixl and nixl-cu13 wheels) is not installed")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
openai = pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port  # noqa: E402  (tests/, put on the path by its conftest)
from gpu_support import SGLANG_ENGINE_FLAGS, Child, call, model_dir, wait_for_instances  # noqa: E402
from random_llama import VOCAB_SIZE  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(1200)]


def _metric(base: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in call(f"{base}/metrics").splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_for_count(base: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(call(f"{base}/health")["instances"]) != count:
        assert time.monotonic() < deadline, call(f"{base}/health")
        time.sleep(0.5)


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

        children.append(Child([*worker, "--mode", "prefill"], env, tmp / "prefill.log"))
        children.append(Child([*worker, "--mode", "decode"], env, tmp / "decode.log"))
        print(f"prefill and decode workers up in {wait_for_instances(base, 3, children):.0f} s", flush=True)
        children[1].stop()  # the aggregated worker leaves: only the split path remains
        _wait_for_count(base, 2)
        split = client.completions.create(**ask)
        print(f"aggregated: {whole.choices[0].text!r}\nprefill -> NIXL -> decode: {split.choices[0].text!r}")
        print(f"usage: {split.usage.model_dump()}")
        assert split.usage.prompt_tokens == 300 and split.usage.completion_tokens == 16
        assert _metric(base, "dynamo_frontend_disagg_requests_total") >= 1
        # Greedy through a transferred KV cache continues as through a computed one.
        assert split.choices[0].text == whole.choices[0].text

        stream = client.chat.completions.create(
            model=model.name, messages=[{"role": "user", "content": "word " * 120}], max_tokens=12,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        print(f"chat stream, split: {len(chunks)} chunks, usage {chunks[-1].usage.model_dump()}, text {text[:40]!r}")
        assert chunks[-1].usage.completion_tokens == 12 and text
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
