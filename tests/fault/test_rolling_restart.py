"""Rolling restart under load: SIGTERM each worker of `dynamo serve` in turn (serve starts it
again); the worker leaves discovery, finishes what ends within --drain-timeout, and hands the
rest to migration. No request fails or loses a token."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_load import LoadLoop, check_against_reference, client_for  # noqa: E402

from conftest import http_get, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(150)
MAX_TOKENS = 150  # about 1.5 s a request at speedup 1: longer than the drain


def test_rolling_restart_of_every_worker_under_load_loses_nothing(cluster, mistral_tokenizer_dir):
    serve, base = cluster.serve(
        "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "1",
        "--drain-timeout", "0.5", workers=2,
    )
    client = client_for(base)
    load = LoadLoop(client, concurrency=8, max_tokens=MAX_TOKENS).start()
    for instance in http_get(f"{base}/health")[1]["instances"]:
        wait_until(lambda: sum(i["in_flight"] for i in http_get(f"{base}/health")[1]["instances"]) >= 4, 20, serve)
        os.kill(instance["pid"], signal.SIGTERM)

        def replaced():
            now = http_get(f"{base}/health")[1]["instances"]
            return len(now) == 2 and instance["pid"] not in {i["pid"] for i in now}
        wait_until(replaced, 30, serve)
    outcomes = load.stop()
    assert not outcomes.failed and not outcomes.lost, (outcomes.failed, outcomes.lost)
    assert outcomes.sent >= 16
    assert not check_against_reference(client, outcomes, MAX_TOKENS)
    page = http_get(f"{base}/metrics")[1]
    assert 'reason="draining"' in page, "the drains should have handed streams to migration"
