"""Request migration: kill -9 a worker while it streams; every request still completes whole.

The mocker's output is deterministic for a given seed (its token cycle starts at seed), so
each request's text is compared with the same request served by a worker that never died.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading

import openai
import pytest

from conftest import http_get, wait_until

pytestmark = pytest.mark.timeout(120)
MAX_TOKENS = 120


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def _run(client: openai.OpenAI, kind: str, seed: int, started: threading.Semaphore | None) -> tuple[str, int, int]:
    """One request of `kind` (chat/completions, stream/whole): (text, completion, prompt tokens)."""
    chat, stream = kind.startswith("chat"), kind.endswith("stream")
    args = dict(model="test-model", max_tokens=MAX_TOKENS, seed=seed, temperature=0)
    if chat:
        args["messages"] = [{"role": "user", "content": f"tell me a story number {seed}"}]
    else:
        args["prompt"] = f"once upon a time, story {seed}"
    create = client.chat.completions.create if chat else client.completions.create
    if not stream:
        if started is not None:
            started.release()  # cannot tell when its tokens flow: the kill waits for the streams
        reply = create(**args)
        text = reply.choices[0].message.content if chat else reply.choices[0].text
        return text, reply.usage.completion_tokens, reply.usage.prompt_tokens
    parts, usage = [], None
    for chunk in create(**args, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        piece = chunk.choices[0].delta.content if chat else chunk.choices[0].text
        if piece:
            if not parts and started is not None:
                started.release()
            parts.append(piece)
    return "".join(parts), usage.completion_tokens, usage.prompt_tokens


KINDS = ["chat-stream", "completions-stream", "chat", "completions"]


def test_killed_worker_streams_continue_on_another_worker_with_every_token(cluster, mistral_tokenizer_dir):
    # Slow workers (speedup 2: about 25 ms a token), so every stream is mid-flight at the kill.
    serve, base = cluster.serve(
        "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "2",
        "--router", "least-loaded", workers=2,
    )
    client = _client(base)
    requests = [(KINDS[i % len(KINDS)], 1000 + i) for i in range(12)]
    started = threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(_run, client, kind, seed, started) for kind, seed in requests]
        for _ in requests:
            assert started.acquire(timeout=30)
        instances = http_get(f"{base}/health")[1]["instances"]
        victim = max(instances, key=lambda i: i["in_flight"])
        assert victim["in_flight"] >= 2, instances
        os.kill(victim["pid"], signal.SIGKILL)
        results = [f.result(timeout=90) for f in futures]

    status, page = http_get(f"{base}/metrics")
    migrated = sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                   if line.startswith("dynamo_frontend_migrations_total{"))
    assert migrated >= 2, "the killed worker's requests should have migrated"
    # Every request has every token, and the very text an unbroken run gives.
    wait_until(lambda: len(http_get(f"{base}/health")[1]["instances"]) >= 1, 10, serve)
    for (kind, seed), (text, completion_tokens, prompt_tokens) in zip(requests, results):
        assert completion_tokens == MAX_TOKENS, (kind, seed)
        ref_text, ref_completion, ref_prompt = _run(client, kind, seed, None)
        assert (text, completion_tokens, prompt_tokens) == (ref_text, ref_completion, ref_prompt), (kind, seed)
