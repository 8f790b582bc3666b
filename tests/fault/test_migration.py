"""Request migration: kill -9 a worker while it streams; every request still completes whole.

The mocker's output is deterministic for a given seed (its token cycle starts at seed), so
each request's text and usage are compared with the same request served by a worker that
never died.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_load import KINDS, client_for, one_request  # noqa: E402

from conftest import http_get  # noqa: E402

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
    started = threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(one_request, client, kind, seed, MAX_TOKENS, started) for kind, seed in requests]
        for _ in requests:
            assert started.acquire(timeout=30)
        instances = http_get(f"{base}/health")[1]["instances"]
        victim = max(instances, key=lambda i: i["in_flight"])
        assert victim["in_flight"] >= 2, instances
        os.kill(victim["pid"], signal.SIGKILL)
        results = [f.result(timeout=90) for f in futures]

    assert _migrations(base) >= 2, "the killed worker's requests should have migrated"
    # Every request has every token, and the very text and usage an unbroken run gives.
    for (kind, seed), result in zip(requests, results):
        assert result[1] == MAX_TOKENS, (kind, seed)
        assert result == one_request(client, kind, seed, MAX_TOKENS), (kind, seed)
