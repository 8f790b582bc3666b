"""`dynamo serve --engine sglang --router kv` on a real GPU, spoken to with the openai client.

Two SGLang workers share the GPU (a small static memory fraction each), serving a random-weight
Llama made on the spot (`random_llama.py`). Checked: the model card carries SGLang's page size
and KV capacity; chat and completions answer, streaming and not, with usage and logprobs;
SGLang's KV events fill the kv router's index, so a repeated prefix goes to the worker that
holds it and hits its prefix cache; a stream the client drops is aborted inside SGLang; a
constrained request is refused (no grammar backend carried).

Skipped without SGLang or without a CUDA GPU (CI). `scripts/gpu/run_sglang_demo.sh` runs it on
the GPU machine; set DYN_TEST_MODEL_DIR to reuse a model, DYN_TEST_LOG_DIR to keep the log.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
openai = pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port  # noqa: E402  (tests/, put on the path by its conftest)
from gpu_support import SGLANG_ENGINE_FLAGS, Child, call, model_dir as _model_dir, wait_for_instances  # noqa: E402
from random_llama import VOCAB_SIZE  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]

WORKERS = 2


class Served:
    def __init__(self, base: str, model: str, child: Child):
        self.base, self.model, self.child = base, model, child

    def output(self) -> str:
        return self.child.output()

    def client(self) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="none", timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = _model_dir(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp / "discovery"), DYN_NAMESPACE=f"sgl{port}")
    child = Child(["serve", "--engine", "sglang", "--router", "kv", "--workers", str(WORKERS), "--model", str(model),
                   "--http-port", str(port), *SGLANG_ENGINE_FLAGS], env, tmp / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        print(f"serve up with {WORKERS} SGLang workers in {wait_for_instances(base, WORKERS, [child]):.0f} s", flush=True)
        yield Served(base, model.name, child)
    finally:
        child.stop()
        keep = os.environ.get("DYN_TEST_LOG_DIR")
        if keep:
            shutil.copy(child.log, Path(keep) / "sglang-serve.log")


def test_model_card_reports_sglangs_page_size_and_kv_capacity(served):
    output = served.output()
    ready = re.findall(r"worker ready: engine=sglang .* block_size=(\d+) kv_blocks=(\d+)", output)
    pages = re.findall(r"SGLang up: page size (\d+), (\d+) KV pages, context (\d+)", output)
    sglang_tokens = re.findall(r"max_total_num_tokens=(\d+)", output)
    print(f"model cards: {ready}; adapter: {pages}; SGLang's max_total_num_tokens: {sglang_tokens}", flush=True)
    assert len(ready) == WORKERS
    for block_size, blocks in ready:
        assert int(block_size) == 16 and int(blocks) > 0
    assert all(int(context) == 4096 for _, _, context in pages)


def test_chat_answers_streaming_and_not(served):
    client = served.client()
    messages = [{"role": "user", "content": "Name three rivers of Europe."}]
    reply = client.chat.completions.create(model=served.model, messages=messages, max_tokens=24,
                                           extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    print(f"chat: finish={choice.finish_reason} usage={reply.usage.model_dump()} text={choice.message.content[:60]!r}")
    assert choice.finish_reason == "length" and choice.message.content
    assert reply.usage.completion_tokens == 24 and reply.usage.prompt_tokens > 5

    stream = client.chat.completions.create(model=served.model, messages=messages, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    print(f"chat stream: {len(chunks)} chunks, finish={finishes}, usage={usage.model_dump()}, text={text[:60]!r}")
    assert finishes == ["length"] and text and usage.completion_tokens == 24


def test_completions_with_token_prompt_greedy_and_logprobs(served):
    client = served.client()
    prompt = list(range(1000, 1040))
    first = client.completions.create(model=served.model, prompt=prompt, max_tokens=8, temperature=0, logprobs=2,
                                      extra_body={"ignore_eos": True})
    again = client.completions.create(model=served.model, prompt=prompt, max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
    logprobs = first.choices[0].logprobs
    print(f"completions: text={first.choices[0].text!r} usage={first.usage.model_dump()} "
          f"top_logprobs[0]={logprobs.top_logprobs[0]}")
    assert first.usage.prompt_tokens == len(prompt) and first.usage.completion_tokens == 8
    assert first.choices[0].text == again.choices[0].text  # greedy is deterministic
    assert len(logprobs.token_logprobs) == 8 and all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def _decisions(base: str) -> Counter:
    counts: Counter = Counter()
    for line in call(f"{base}/metrics").splitlines():
        if line.startswith("dynamo_router_kv_decisions_total{"):
            counts[line.split('worker="')[1].split('"')[0]] += float(line.rsplit(" ", 1)[1])
    return counts


def test_sglang_kv_events_fill_the_router_index_and_a_repeated_prefix_follows_its_cache(served):
    base, model = served.base, served.model
    shared = [(t * 7919) % (VOCAB_SIZE - 10) + 5 for t in range(512)]  # 32 pages of 16 tokens
    call(f"{base}/v1/completions", {"model": model, "prompt": shared + [11, 12], "max_tokens": 2})

    deadline = time.monotonic() + 10
    while True:  # the stored events travel SGLang -> worker -> router asynchronously
        scores = call(f"{base}/debug/routing", {"model": model, "prompt": shared + [99, 98]})["workers"]
        holder = max(scores, key=lambda w: scores[w]["overlap_blocks"])
        if scores[holder]["overlap_blocks"] == 32:
            break
        assert time.monotonic() < deadline, scores
        time.sleep(0.1)
    print("router index after one request: " + ", ".join(f"{w}: {s['overlap_blocks']} blocks" for w, s in scores.items()))
    assert sum(s["overlap_blocks"] > 0 for s in scores.values()) == 1

    before = _decisions(base)
    cached = []
    for i in range(6):
        reply = call(f"{base}/v1/completions", {"model": model, "prompt": shared + [20 + i, 30 + i], "max_tokens": 2})
        cached.append(reply["usage"]["prompt_tokens_details"]["cached_tokens"])
    after = _decisions(base)
    routed = {w: after[w] - before.get(w, 0) for w in after if after[w] - before.get(w, 0)}
    print(f"6 requests sharing the prefix went to {routed} (holder {holder}); SGLang cached tokens {cached}")
    assert routed == {holder: 6}
    assert all(c >= 496 for c in cached)


def test_a_dropped_stream_is_aborted_in_sglang(served):
    client = served.client()
    stream = client.completions.create(model=served.model, prompt=list(range(200, 232)), max_tokens=3000,
                                       stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while not re.search(r"aborted request \S+ in SGLang", served.output()):
        assert time.monotonic() < deadline, "the worker aborted nothing in SGLang"
        time.sleep(0.1)
    print(re.search(r".*aborted request \S+ in SGLang.*", served.output()).group(0).strip())
    # SGLang goes on serving (the aborted request's pages were freed, not leaked into a stuck batch).
    reply = client.completions.create(model=served.model, prompt=list(range(200, 232)), max_tokens=4)
    assert reply.usage.completion_tokens == 4


def test_constrained_request_without_grammar_backend_is_refused(served):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as refused:
        served.client().completions.create(model=served.model, prompt="Pick a number:", max_tokens=8,
                                           extra_body={"guided_regex": "[0-9]{3}"})
    print(f"guided_regex without a grammar backend: {refused.value.status_code} {refused.value.message[:120]}")
