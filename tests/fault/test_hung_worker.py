"""A worker that stops answering without closing its connection (SIGSTOP): past --stall-timeout
its requests continue on another worker, it is not routed to while silent, and it is routed to
again once it reports (SIGCONT)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_load import KINDS, client_for, one_request, references, signal_busiest_worker_mid_stream  # noqa: E402

from conftest import http_get, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(120)
MAX_TOKENS = 150


def _stalls(base: str) -> float:
    """Requests that stalled on a worker, before or after their first token."""
    page = http_get(f"{base}/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith(("dynamo_frontend_migrations_total{", "dynamo_frontend_reroutes_total{"))
               and 'reason="stalled"' in line)


def test_stopped_worker_requests_migrate_and_it_is_avoided_until_it_answers(cluster, mistral_tokenizer_dir):
    # A long lease: discovery alone would not drop the stopped worker within the test.
    serve, base = cluster.serve(
        "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "1",
        "--stall-timeout", "1", "--lease-ttl", "60", workers=2,
    )
    client = client_for(base)
    requests = [(KINDS[i % 2], 2000 + i) for i in range(6)]  # streamed: chat and completions
    victims: list[dict] = []
    try:
        results = signal_busiest_worker_mid_stream(client, base, requests, MAX_TOKENS, signal.SIGSTOP, victims=victims)
        # While it is silent, new requests go to the other worker (none stalls on it again).
        stalls = _stalls(base)
        for i in range(4):
            assert one_request(client, "completions", i, 5)[1] == 5
        assert _stalls(base) == stalls, "a request was routed to the stopped worker"
        page = http_get(f"{base}/metrics")[1]
        assert 'dynamo_frontend_migrations_total{model="test-model",reason="stalled"}' in page
        expected = references(client, requests, MAX_TOKENS)
        for (kind, seed), result in zip(requests, results):
            assert result[1] == MAX_TOKENS and result == expected[(kind, seed)], (kind, seed)
    finally:
        for victim in victims:
            os.kill(victim["pid"], signal.SIGCONT)
    wait_until(lambda: "reports again after stalling" in serve.output(), 10, serve)

    # Routed to again: long streams spread over both workers.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one_request, client, "completions-stream", i, MAX_TOKENS) for i in range(4)]
        wait_until(lambda: all(i["in_flight"] for i in http_get(f"{base}/health")[1]["instances"]), 10, serve)
        assert all(f.result(timeout=60)[1] == MAX_TOKENS for f in futures)
