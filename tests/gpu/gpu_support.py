"""What the GPU tests share: engine flags for workers that share one GPU (vLLM's and SGLang's),
the random model, HTTP calls, and `dynamo` child processes whose output is kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from random_llama import VOCAB_SIZE, build_random_llama

KV_CACHE_BYTES = 1 << 30  # per worker; fixed, so workers starting together size alike
ENGINE_FLAGS = [
    "--gpu-memory-utilization", "0.3",
    "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
    "--max-model-len", "4096",
    "--enforce-eager",  # starts faster; the benchmark script measures with CUDA graphs
    "--enable-log-requests",  # vLLM logs "Aborted request(s) ..." for the cancellation check
]
# SGLang on the image's wheel set (shared/gpu/sglang-0.5.15.md): triton attention and pytorch
# sampling (flashinfer's JIT kernels are not carried), no grammar backend unless xgrammar is;
# a small static memory fraction so several engines share the GPU, and a fixed KV pool: SGLang
# sizes its pool from the memory free when it starts, so engines starting together would race.
SGLANG_ENGINE_FLAGS = [
    "--mem-fraction-static", "0.15",
    "--max-total-tokens", "65536",
    "--context-length", "4096",
    "--attention-backend", "triton",
    "--sampling-backend", "pytorch",
    "--disable-cuda-graph",  # starts faster; the benchmark script measures with CUDA graphs
]
START_TIMEOUT_S = 600
DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


def call(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read().decode()
    return json.loads(raw) if raw.startswith(("{", "[")) else raw


def model_dir(tmp_path_factory) -> Path:
    """DYN_TEST_MODEL_DIR when it holds a model, else a random Llama made now."""
    preset = os.environ.get("DYN_TEST_MODEL_DIR")
    if preset and (Path(preset) / "model.safetensors").is_file():
        return Path(preset)
    return build_random_llama(tmp_path_factory.mktemp("models") / "llama-8l-random")


class Child:
    """A `dynamo` command run as a child process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        print("\n$ dynamo " + " ".join(args), flush=True)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(DYNAMO + args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for_instances(base: str, count: int, children: list[Child]) -> float:
    """Wait until `count` workers are in the frontend's /health; seconds taken."""
    started = time.monotonic()
    while True:
        for child in children:
            assert child.proc.poll() is None, f"{child.log.name} exited:\n{child.output()[-4000:]}"
        assert time.monotonic() - started < START_TIMEOUT_S, "not up in time:\n" + "\n".join(
            c.output()[-2000:] for c in children)
        try:
            if len(call(f"{base}/health")["instances"]) >= count:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(1)


def metric(base: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels on the frontend's /metrics."""
    total = 0.0
    for line in call(f"{base}/metrics").splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def router_decisions(base: str) -> Counter:
    """The kv router's decisions so far, per worker."""
    counts: Counter = Counter()
    for line in call(f"{base}/metrics").splitlines():
        if line.startswith("dynamo_router_kv_decisions_total{"):
            counts[line.split('worker="')[1].split('"')[0]] += float(line.rsplit(" ", 1)[1])
    return counts


def check_chat_streaming_and_not(client, model: str) -> None:
    """Chat through the openai client, streaming and not, with usage."""
    messages = [{"role": "user", "content": "Name three rivers of Europe."}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                           extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    print(f"chat: finish={choice.finish_reason} usage={reply.usage.model_dump()} text={choice.message.content[:60]!r}")
    assert choice.finish_reason == "length" and choice.message.content
    assert reply.usage.completion_tokens == 24 and reply.usage.prompt_tokens > 5

    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    print(f"chat stream: {len(chunks)} chunks, finish={finishes}, usage={usage.model_dump()}, text={text[:60]!r}")
    assert finishes == ["length"] and text and usage.completion_tokens == 24


def check_completions_greedy_with_logprobs(client, model: str) -> None:
    """Completions from a token prompt: greedy twice gives the same text; logprobs and top-2."""
    prompt = list(range(1000, 1040))
    first = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=2,
                                      extra_body={"ignore_eos": True})
    again = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
    logprobs = first.choices[0].logprobs
    print(f"completions: text={first.choices[0].text!r} usage={first.usage.model_dump()} "
          f"top_logprobs[0]={logprobs.top_logprobs[0]}")
    assert first.usage.prompt_tokens == len(prompt) and first.usage.completion_tokens == 8
    assert first.choices[0].text == again.choices[0].text  # greedy is deterministic
    assert len(logprobs.token_logprobs) == 8 and all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def check_repeated_prefix_follows_its_cache(base: str, model: str, engine: str) -> None:
    """One request's KV events fill the kv router's index (32 blocks of 16 tokens), and six
    requests sharing that prefix all go to the worker holding it and hit its prefix cache."""
    shared = [(t * 7919) % (VOCAB_SIZE - 10) + 5 for t in range(512)]  # 32 blocks of 16 tokens
    call(f"{base}/v1/completions", {"model": model, "prompt": shared + [11, 12], "max_tokens": 2})

    deadline = time.monotonic() + 10
    while True:  # the stored events travel engine -> worker -> router asynchronously
        scores = call(f"{base}/debug/routing", {"model": model, "prompt": shared + [99, 98]})["workers"]
        holder = max(scores, key=lambda w: scores[w]["overlap_blocks"])
        if scores[holder]["overlap_blocks"] == 32:
            break
        assert time.monotonic() < deadline, scores
        time.sleep(0.1)
    print("router index after one request: " + ", ".join(f"{w}: {s['overlap_blocks']} blocks" for w, s in scores.items()))
    assert sum(s["overlap_blocks"] > 0 for s in scores.values()) == 1

    before = router_decisions(base)
    cached = []
    for i in range(6):
        reply = call(f"{base}/v1/completions", {"model": model, "prompt": shared + [20 + i, 30 + i], "max_tokens": 2})
        cached.append(reply["usage"]["prompt_tokens_details"]["cached_tokens"])
    after = router_decisions(base)
    routed = {w: after[w] - before.get(w, 0) for w in after if after[w] - before.get(w, 0)}
    print(f"6 requests sharing the prefix went to {routed} (holder {holder}); {engine} cached tokens {cached}")
    assert routed == {holder: 6}
    assert all(c >= 496 for c in cached)
