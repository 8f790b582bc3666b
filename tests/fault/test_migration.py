"""Request migration: kill -9 a worker while it streams; every request still completes whole.

The mocker's output is deterministic for a given seed (its token cycle starts at seed), so
each request's text and usage are compared with the same request served by a worker that
never died.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_load import KINDS, client_for, one_request, references, signal_busiest_worker_mid_stream  # noqa: E402

from conftest import http_get, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(120)
MAX_TOKENS = 120


def _migrations(base: str) -> float:
    page = http_get(f"{base}/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith("dynamo_frontend_migrations_total{"))


def test_killed_worker_streams_continue_on_another_worker_with_every_token(cluster, mistral_tokenizer_dir):
    # Slow workers (speedup 2), so every stream is mid-flight at the kill.
    serve, base = cluster.serve(
        "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "2",
        "--router", "least-loaded", workers=2,
    )
    client = client_for(base)
    requests = [(KINDS[i % len(KINDS)], 1000 + i) for i in range(12)]
    results = signal_busiest_worker_mid_stream(client, base, requests, MAX_TOKENS, signal.SIGKILL, min_in_flight=2)

    assert _migrations(base) >= 2, "the killed worker's requests should have migrated"
    # Every request has every token, and the very text and usage an unbroken run gives.
    expected = references(client, requests, MAX_TOKENS)
    for (kind, seed), result in zip(requests, results):
        assert result[1] == MAX_TOKENS, (kind, seed)
        assert result == expected[(kind, seed)], (kind, seed)


def test_killed_decode_worker_streams_continue_with_stop_strings_and_every_token(cluster, mistral_tokenizer_dir):
    """Disaggregated: the decode phase moves to the other decode worker (computing the prompt and
    the output so far itself); a stop string late in the text still ends it where it should."""
    serve, base = cluster.serve(
        "--disagg", "--prefill-workers", "1", "--decode-workers", "2", "--disagg-min-prompt-tokens", "1",
        "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "2",
        "--router", "least-loaded", workers=1,
    )
    wait_until(lambda: len(http_get(f"{base}/health")[1]["instances"]) == 3, 60, serve)
    client = client_for(base)
    # A stop string from late in one request's unbroken text.
    full = one_request(client, "completions", 7, MAX_TOKENS)[0]
    stop = full[int(len(full) * 0.8):][:8]
    requests = [(KINDS[i % len(KINDS)], 3000 + i) for i in range(7)]
    started = threading.Semaphore(0)

    def with_stop():
        started.release()
        reply = client.completions.create(model="test-model", prompt="once upon a time, story 7", seed=7,
                                          temperature=0, max_tokens=MAX_TOKENS, stop=[stop])
        return reply.choices[0].text, reply.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(len(requests) + 1) as pool:
        # Past the prefill worker's token: the decode workers are streaming.
        futures = [pool.submit(one_request, client, kind, seed, MAX_TOKENS, started, 5) for kind, seed in requests]
        stopped = pool.submit(with_stop)
        for _ in range(len(requests) + 1):
            assert started.acquire(timeout=30)
        decoders = [i for i in http_get(f"{base}/health")[1]["instances"] if i["role"] == "decode"]
        victim = max(decoders, key=lambda i: i["in_flight"])
        assert victim["in_flight"] >= 2, decoders
        os.kill(victim["pid"], signal.SIGKILL)
        results = [f.result(timeout=90) for f in futures]
        assert stopped.result(timeout=90) == (full[:full.index(stop)], "stop")

    assert _migrations(base) >= 1
    expected = references(client, requests, MAX_TOKENS)
    for (kind, seed), result in zip(requests, results):
        assert result[1] == MAX_TOKENS, (kind, seed)
        assert result == expected[(kind, seed)], (kind, seed)
