"""etcd and NATS restarts under streaming load: no request hangs or ends short without an error.

Each run prints sent / completed whole / failed with a clear error / lost (docs/reliability.md
records them). An etcd restart shorter than the lease costs nothing: discovery is not on the
serving path. A NATS restart cuts every stream at once; those whose worker cannot be reached
again in time fail with a clear error, never silently.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "fault"))
from fault_load import LoadLoop, client_for  # noqa: E402

from conftest import http_get, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(180)
MAX_TOKENS = 40


def _start(cluster, etcd_server, nats_server, tokenizer, lease_ttl: float) -> str:
    args = ["--discovery", "etcd", "--etcd-endpoints", etcd_server.url, "--request-plane", "nats",
            "--event-plane", "nats", "--nats-url", nats_server.url, "--lease-ttl", str(lease_ttl)]
    _, base = cluster.frontend(*args)
    for _ in range(2):
        cluster.start("worker", "--model", str(tokenizer), "--model-name", "test-model", "--speedup-ratio", "5", *args)
    wait_until(lambda: len(http_get(f"{base}/health")[1].get("instances", [])) == 2, 60)
    return base


def _report(name: str, outcomes) -> None:
    print(f"\n{name}: sent {outcomes.sent}, completed whole {len(outcomes.completed)}, "
          f"failed {len(outcomes.failed)}, lost {len(outcomes.lost)}; errors: {sorted(set(outcomes.failed))[:3]}")


def test_etcd_restart_under_load_fails_nothing(cluster, etcd_server, nats_server, mistral_tokenizer_dir):
    base = _start(cluster, etcd_server, nats_server, mistral_tokenizer_dir, lease_ttl=10)
    load = LoadLoop(client_for(base), concurrency=6, max_tokens=MAX_TOKENS).start()
    time.sleep(1.0)
    etcd_server.restart(1.0)  # well inside the 10 s lease
    time.sleep(2.0)
    outcomes = load.stop()
    _report("etcd restart", outcomes)
    assert outcomes.sent >= 10 and not outcomes.failed and not outcomes.lost


def test_nats_restart_under_load_loses_nothing_silently(cluster, etcd_server, nats_server, mistral_tokenizer_dir):
    base = _start(cluster, etcd_server, nats_server, mistral_tokenizer_dir, lease_ttl=3)
    load = LoadLoop(client_for(base), concurrency=6, max_tokens=MAX_TOKENS).start()
    time.sleep(1.0)
    nats_server.restart(1.0)
    time.sleep(4.0)  # the workers and the frontend reconnect by themselves
    outcomes = load.stop()
    _report("NATS restart", outcomes)
    assert not outcomes.lost, outcomes.lost
    # Serving again, whole.
    after = LoadLoop(client_for(base), concurrency=2, max_tokens=MAX_TOKENS).start()
    time.sleep(1.5)
    again = after.stop()
    assert again.completed and not again.failed and not again.lost, (again.failed, again.lost)
