"""Request migration with separately started frontend and workers on etcd and NATS: kill -9 a
worker mid-stream; every stream continues on the other worker with every token."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "fault"))
from fault_load import KINDS, client_for, references, signal_busiest_worker_mid_stream  # noqa: E402

from conftest import http_get, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(180)
MAX_TOKENS = 120


def test_killed_worker_streams_migrate_over_nats(cluster, etcd_server, nats_server, mistral_tokenizer_dir):
    args = ["--discovery", "etcd", "--etcd-endpoints", etcd_server.url, "--request-plane", "nats",
            "--event-plane", "nats", "--nats-url", nats_server.url, "--lease-ttl", "2"]
    _, base = cluster.frontend("--router", "least-loaded", *args)
    for _ in range(2):
        cluster.start("worker", "--model", str(mistral_tokenizer_dir), "--model-name", "test-model",
                      "--speedup-ratio", "2", *args)
    wait_until(lambda: len(http_get(f"{base}/health")[1].get("instances", [])) == 2, 60)
    client = client_for(base)
    requests = [(KINDS[i % len(KINDS)], 4000 + i) for i in range(8)]
    results = signal_busiest_worker_mid_stream(client, base, requests, MAX_TOKENS, signal.SIGKILL, started_after=3,
                                              min_in_flight=2)
    page = http_get(f"{base}/metrics")[1]
    assert 'dynamo_frontend_migrations_total{model="test-model",reason="connection_lost"}' in page
    expected = references(client, requests, MAX_TOKENS)
    for (kind, seed), result in zip(requests, results):
        assert result[1] == MAX_TOKENS and result == expected[(kind, seed)], (kind, seed)
