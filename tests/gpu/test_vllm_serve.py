"""`dynamo serve --engine vllm --router kv` on a real GPU, spoken to with the openai client.

Two vLLM workers share the GPU (small fixed KV caches), serving a random-weight Llama made on
the spot (`random_llama.py`). Checked: the model card carries vLLM's block size and KV capacity;
chat and completions answer, streaming and not, with usage and logprobs; vLLM's KV events fill
the kv router's index, so a repeated prefix goes to the worker that holds it and hits its prefix
cache; a stream the client drops is aborted inside vLLM.

Skipped without vLLM or without a CUDA GPU (CI). `scripts/gpu/run_vllm_demo.sh` runs it on the
GPU machine; set DYN_TEST_MODEL_DIR to reuse a model, DYN_TEST_LOG_DIR to keep the serve log.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
openai = pytest.importorskip("openai")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import free_port  # noqa: E402  (tests/, put on the path by its conftest)
from gpu_support import (  # noqa: E402
    ENGINE_FLAGS, START_TIMEOUT_S, call as _call, check_chat_streaming_and_not, check_completions_greedy_with_logprobs,
    check_repeated_prefix_follows_its_cache, model_dir as _model_dir)

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]

WORKERS = 2


@dataclass
class Served:
    base: str
    model: str
    log: Path
    proc: subprocess.Popen

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="none", timeout=120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    log = tmp / "serve.log"
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp / "discovery"), DYN_NAMESPACE=f"gpu{port}",
               VLLM_LOG_STATS_INTERVAL="2")
    command = [sys.executable, "-m", "dynamo_core.cli.main", "serve", "--engine", "vllm", "--router", "kv",
               "--workers", str(WORKERS), "--model", str(model_dir), "--http-port", str(port), *ENGINE_FLAGS]
    print("\n$ dynamo " + " ".join(command[3:]), flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", model_dir.name, log, proc)
    started = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, f"serve exited:\n{served.output()[-4000:]}"
            assert time.monotonic() - started < START_TIMEOUT_S, f"not up in time:\n{served.output()[-4000:]}"
            try:
                if len(_call(f"{served.base}/health")["instances"]) == WORKERS:
                    break
            except OSError:
                pass
            time.sleep(1)
        print(f"serve up with {WORKERS} vLLM workers in {time.monotonic() - started:.0f} s", flush=True)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        keep = os.environ.get("DYN_TEST_LOG_DIR")
        if keep:
            shutil.copy(log, Path(keep) / "serve.log")


def test_model_card_reports_vllms_block_size_and_kv_capacity(served):
    output = served.output()
    ready = re.findall(r"worker ready: engine=vllm .* block_size=(\d+) kv_blocks=(\d+)", output)
    vllm_tokens = [int(n.replace(",", "")) for n in re.findall(r"GPU KV cache size: ([\d,]+) tokens", output)]
    print(f"model cards: {ready}; vLLM's own KV cache sizes: {vllm_tokens} tokens", flush=True)
    assert len(ready) == WORKERS
    for block_size, blocks in ready:
        assert int(block_size) == 16  # vLLM's default on CUDA
        assert int(blocks) * int(block_size) in vllm_tokens


def test_workers_schedule_with_vllm_serves_defaults(served):
    """The batch limits vLLM picks for its OpenAI server on this GPU, not AsyncLLM's smaller
    engine-context defaults (128 sequences, 2,048 tokens a step)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    tokens, seqs = AsyncEngineArgs.get_batch_defaults(world_size=1)
    expected = (seqs[UsageContext.OPENAI_API_SERVER], tokens[UsageContext.OPENAI_API_SERVER])
    logged = re.findall(r"vLLM scheduler: max_num_seqs=(\d+) max_num_batched_tokens=(\d+)", served.output())
    print(f"workers' scheduler limits: {logged}; vllm serve's defaults here: {expected}", flush=True)
    assert [(int(a), int(b)) for a, b in logged] == [expected] * WORKERS


def test_workers_log_vllms_engine_summary(served):
    served.client().completions.create(model=served.model, prompt="summary", max_tokens=8)
    deadline = time.monotonic() + 10
    while "Avg generation throughput" not in served.output():
        assert time.monotonic() < deadline, "no vLLM engine summary in the workers' log"
        time.sleep(0.5)
    print(re.findall(r".*Avg generation throughput.*", served.output())[-1][-200:], flush=True)


def test_chat_answers_streaming_and_not(served):
    check_chat_streaming_and_not(served.client(), served.model)


def test_completions_with_token_prompt_greedy_and_logprobs(served):
    check_completions_greedy_with_logprobs(served.client(), served.model)


def test_vllm_kv_events_fill_the_router_index_and_a_repeated_prefix_follows_its_cache(served):
    check_repeated_prefix_follows_its_cache(served.base, served.model, "vLLM")


def test_a_dropped_stream_is_aborted_in_vllm(served):
    client = served.client()
    stream = client.completions.create(model=served.model, prompt=list(range(200, 232)), max_tokens=3000,
                                       stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while not re.search(r"Aborted request\(s\)|Request \S+ aborted", served.output()):
        assert time.monotonic() < deadline, "vLLM logged no abort"
        time.sleep(0.1)
    line = re.search(r".*(Aborted request\(s\)|Request \S+ aborted).*", served.output()).group(0)
    print(f"vLLM: {line.strip()}")


def test_structured_output_constrains_vllms_output(served):
    client = served.client()
    messages = [{"role": "user", "content": "Is water wet?"}]
    reply = client.chat.completions.create(model=served.model, messages=messages, max_tokens=16,
                                           extra_body={"guided_choice": ["yes", "no"]})
    regex = client.completions.create(model=served.model, prompt="Pick a number:", max_tokens=8,
                                      extra_body={"guided_regex": "[0-9]{3}"})
    print(f"guided_choice -> {reply.choices[0].message.content!r}; guided_regex -> {regex.choices[0].text!r}")
    assert reply.choices[0].message.content in ("yes", "no")
    assert re.fullmatch("[0-9]{3}", regex.choices[0].text)
