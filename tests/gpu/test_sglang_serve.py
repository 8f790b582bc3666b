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
from pathlib import Path

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
openai = pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port  # noqa: E402  (tests/, put on the path by its conftest)
from gpu_support import (  # noqa: E402
    SGLANG_ENGINE_FLAGS, Child, check_chat_streaming_and_not, check_completions_greedy_with_logprobs,
    check_repeated_prefix_follows_its_cache, model_dir as _model_dir, wait_for_instances)

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
    check_chat_streaming_and_not(served.client(), served.model)


def test_completions_with_token_prompt_greedy_and_logprobs(served):
    check_completions_greedy_with_logprobs(served.client(), served.model)


def test_sglang_kv_events_fill_the_router_index_and_a_repeated_prefix_follows_its_cache(served):
    check_repeated_prefix_follows_its_cache(served.base, served.model, "SGLang")


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
