"""`dynamo serve --engine trtllm --router kv` on a real GPU, aggregated and disaggregated.

Written for the day TensorRT-LLM can be installed: it never has been on this project's
machines (its wheels come only from NVIDIA's package index; see plugins/dynamo-trtllm/README.md),
so this test has not run yet. Skipped without `tensorrt_llm` or without a CUDA GPU.

Two aggregated workers share the GPU, serving a random-weight Llama made on the spot
(`random_llama.py`); then one prefill and one decode worker, the KV moved by TensorRT-LLM's
cache transceiver (NIXL). Checked: the model card carries TensorRT-LLM's block size and KV
capacity; chat and completions answer, streaming and not, with usage and logprobs; KV events
fill the kv router's index so that a repeated prefix goes to the worker holding it and hits its
cache; a disaggregated request is prefilled on one worker and decoded on the other.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_llm", reason="TensorRT-LLM is not installed")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
openai = pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port  # noqa: E402  (tests/, put on the path by its conftest)
from gpu_support import Child, call, model_dir as _model_dir, wait_for_instances  # noqa: E402
from random_llama import VOCAB_SIZE  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(1200)]

BLOCK = 32
ENGINE_FLAGS = ["--kv-cache-free-gpu-memory-fraction", "0.2", "--max-seq-len", "4096", "--tokens-per-block", str(BLOCK),
                "--max-batch-size", "32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory)


def _serve(tmp: Path, model: Path, *args: str):
    port = free_port()
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp / "discovery"), DYN_NAMESPACE=f"gpu{port}")
    child = Child(["serve", "--engine", "trtllm", "--router", "kv", "--model", str(model), "--http-port", str(port),
                   *args, *ENGINE_FLAGS], env, tmp / "serve.log")
    return child, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def aggregated(model_dir, tmp_path_factory):
    child, base = _serve(tmp_path_factory.mktemp("agg"), model_dir, "--workers", "2")
    try:
        print(f"serve up with 2 TensorRT-LLM workers in {wait_for_instances(base, 2, [child]):.0f} s", flush=True)
        yield child, base
    finally:
        child.stop()


@pytest.fixture(scope="module")
def disaggregated(model_dir, tmp_path_factory):
    child, base = _serve(tmp_path_factory.mktemp("disagg"), model_dir, "--disagg", "--disagg-min-prompt-tokens", "64")
    try:
        print(f"prefill + decode workers up in {wait_for_instances(base, 2, [child]):.0f} s", flush=True)
        yield child, base
    finally:
        child.stop()


def _client(base: str) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", timeout=120)


def test_model_card_reports_trtllms_block_size_and_kv_capacity(aggregated):
    child, _ = aggregated
    ready = re.findall(r"worker ready: engine=trtllm .* block_size=(\d+) kv_blocks=(\d+)", child.output())
    print(f"model cards: {ready}", flush=True)
    assert len(ready) == 2 and all(int(size) == BLOCK and int(blocks) > 0 for size, blocks in ready)


def test_chat_and_completions_answer_with_usage_and_logprobs(aggregated, model_dir):
    _, base = aggregated
    client = _client(base)
    messages = [{"role": "user", "content": "Name three rivers of Europe."}]
    reply = client.chat.completions.create(model=model_dir.name, messages=messages, max_tokens=24,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 24
    stream = client.chat.completions.create(model=model_dir.name, messages=messages, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 24
    prompt = list(range(1000, 1040))
    first = client.completions.create(model=model_dir.name, prompt=prompt, max_tokens=8, temperature=0, logprobs=2,
                                      extra_body={"ignore_eos": True})
    again = client.completions.create(model=model_dir.name, prompt=prompt, max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert first.usage.prompt_tokens == len(prompt) and first.choices[0].text == again.choices[0].text
    assert len(first.choices[0].logprobs.token_logprobs) == 8


def test_kv_events_fill_the_router_index_and_a_repeated_prefix_hits_the_cache(aggregated, model_dir):
    _, base = aggregated
    shared = [(t * 7919) % (VOCAB_SIZE - 10) + 5 for t in range(16 * BLOCK)]
    call(f"{base}/v1/completions", {"model": model_dir.name, "prompt": shared + [11, 12], "max_tokens": 2})
    deadline = time.monotonic() + 15
    while True:
        scores = call(f"{base}/debug/routing", {"model": model_dir.name, "prompt": shared + [99, 98]})["workers"]
        if max(s["overlap_blocks"] for s in scores.values()) == 16:
            break
        assert time.monotonic() < deadline, scores
        time.sleep(0.2)
    reply = call(f"{base}/v1/completions", {"model": model_dir.name, "prompt": shared + [21, 22], "max_tokens": 2})
    cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
    print(f"router index: {scores}; cached tokens on the repeat: {cached}", flush=True)
    assert cached >= 15 * BLOCK


def test_a_long_prompt_is_prefilled_on_one_worker_and_decoded_on_the_other(disaggregated, model_dir):
    child, base = disaggregated
    prompt = [(t * 31) % (VOCAB_SIZE - 10) + 5 for t in range(512)]
    reply = call(f"{base}/v1/completions", {"model": model_dir.name, "prompt": prompt, "max_tokens": 16,
                                            "temperature": 0, "ignore_eos": True})
    whole = call(f"{base}/v1/completions", {"model": model_dir.name, "prompt": prompt[:32], "max_tokens": 4})
    metrics = call(f"{base}/metrics")
    print(f"disaggregated: {reply['usage']}; short prompt served whole: {whole['usage']}", flush=True)
    assert reply["usage"]["completion_tokens"] == 16 and reply["usage"]["prompt_tokens"] == 512
    pulled = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("dynamo_frontend_kv_transfer_blocks") and "{" in line and "_created" not in line]
    assert pulled and max(pulled) >= 512 // BLOCK  # the decode worker reported the prompt's blocks
    assert "computes its prompt on this decode worker" not in child.output()
