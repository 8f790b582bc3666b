"""Disaggregated prefill/decode with vLLM workers: vLLM's NIXL connector moves the KV.

A frontend, a vLLM decode worker (prefix caching off, so it can only have a prompt's KV by
computing it or by pulling it) and, later, a vLLM prefill worker share one GPU. The same greedy
request is served first by the decode worker alone (no prefill worker yet: served whole) and
then split (prefill worker computes the prompt, the decode worker pulls its KV over NIXL and
generates): the texts must agree, and vLLM's connector must have been used (vLLM fails a
request whose KV load fails, its default policy, rather than recompute it silently).

Skipped without vLLM, NIXL or a CUDA GPU. On two GPUs (when lent) set CUDA_VISIBLE_DEVICES
per worker instead of sharing one.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
pytest.importorskip("nixl", reason="NIXL (the nixl and nixl-cu13 wheels) is not installed")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
openai = pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port  # noqa: E402  (tests/, put on the path by its conftest)
from gpu_support import ENGINE_FLAGS, Child, metric, model_dir, wait_for_instances  # noqa: E402
from random_llama import VOCAB_SIZE  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(1200)]


def test_vllm_prefill_and_decode_workers_move_kv_with_nixl(tmp_path_factory):
    model = model_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("disagg")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp / "discovery"), DYN_NAMESPACE=f"pd{port}")
    worker = ["worker", "--engine", "vllm", "--model", str(model), *ENGINE_FLAGS]
    children = [
        Child(["frontend", "--http-port", str(port), "--disagg-min-prompt-tokens", "64"], env, tmp / "frontend.log"),
        Child([*worker, "--mode", "decode", "--no-enable-prefix-caching"], env, tmp / "decode.log"),
    ]
    try:
        print(f"decode worker up in {wait_for_instances(base, 1, children):.0f} s", flush=True)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)
        prompt = [(t * 7919) % (VOCAB_SIZE - 10) + 5 for t in range(300)]
        ask = dict(model=model.name, prompt=prompt, max_tokens=16, temperature=0, extra_body={"ignore_eos": True})

        whole = client.completions.create(**ask)
        assert metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="no_prefill_worker") == 1

        children.append(Child([*worker, "--mode", "prefill"], env, tmp / "prefill.log"))
        print(f"prefill worker up in {wait_for_instances(base, 2, children):.0f} s", flush=True)
        split = client.completions.create(**ask)
        print(f"decode worker alone: {whole.choices[0].text!r}\nprefill -> NIXL -> decode: {split.choices[0].text!r}")
        print(f"usage: {split.usage.model_dump()}")
        assert split.usage.prompt_tokens == 300 and split.usage.completion_tokens == 16
        assert metric(base, "dynamo_frontend_disagg_requests_total") == 1
        assert metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="decode_recomputed") == 0
        blocks = metric(base, "dynamo_frontend_kv_transfer_blocks_total")
        moved = metric(base, "dynamo_frontend_kv_transfer_bytes_total")
        print(f"KV pulled: {blocks:.0f} blocks, {moved / 2**20:.1f} MiB")
        assert blocks == -(-300 // 16) and moved > 0
        # Greedy through a pulled KV cache continues as through a computed one.
        assert split.choices[0].text == whole.choices[0].text

        stream = client.chat.completions.create(
            model=model.name, messages=[{"role": "user", "content": "word " * 120}], max_tokens=12,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        print(f"chat stream, split: {len(chunks)} chunks, usage {chunks[-1].usage.model_dump()}, text {text[:40]!r}")
        assert chunks[-1].usage.completion_tokens == 12 and text
        assert metric(base, "dynamo_frontend_disagg_requests_total") == 2
        for child in children[1:]:  # what vLLM said about its connector, for the record
            lines = [line for line in child.output().splitlines() if re.search(r"(?i)nixl", line)]
            print(f"{child.log.name}: " + "\n  ".join(lines[:6]))
    finally:
        for child in reversed(children):
            child.stop()
        keep = os.environ.get("DYN_TEST_LOG_DIR")
        if keep:
            for child in children:
                shutil.copy(child.log, Path(keep) / f"disagg-{child.log.name}")
