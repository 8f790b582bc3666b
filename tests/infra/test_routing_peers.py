"""Two real frontends with `--router kv` route as one, over real NATS and, on one host with
file or etcd discovery and the TCP planes, over loopback UDP: each sees the other's in-flight
requests, and a killed frontend's requests lapse from the survivor's load."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request

import pytest

from conftest import http_get, wait_until

pytestmark = pytest.mark.timeout(120)

PROMPT_TOKENS = 400


def _post(url: str, body: dict, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _prompt(seed: int) -> list[int]:
    return [(seed * 131 + t * 7) % 250 + 3 for t in range(PROMPT_TOKENS)]


def _queued(base: str, seed: int) -> dict[str, dict]:
    body = {"model": "mocker", "prompt": _prompt(seed), "max_tokens": 1}
    return _post(f"{base}/debug/routing", body)["workers"]


def _instances(base: str) -> int:
    try:
        return len(http_get(f"{base}/health", timeout=2)[1].get("instances", []))
    except (OSError, AttributeError):
        return 0


def test_a_second_frontend_sees_the_first_ones_requests_and_drops_them_when_it_dies(cluster, nats_server):
    _second_frontend_sees_the_first_ones_requests(cluster, ["--event-plane", "nats", "--nats-url", nats_server.url])


def test_frontends_on_one_host_share_requests_without_nats(cluster):
    """File discovery and the TCP planes (`dynamo serve`'s defaults): the peers' messages go
    over loopback UDP to the addresses the frontends registered in discovery."""
    _second_frontend_sees_the_first_ones_requests(cluster, ["--discovery", "file", "--request-plane", "tcp",
                                                            "--event-plane", "tcp"])


def test_frontends_on_one_host_share_requests_over_etcd_discovery_without_nats(cluster, etcd_server):
    """etcd discovery, TCP planes: the frontends of one host find each other's UDP addresses
    in etcd (those of other hosts would be skipped)."""
    _second_frontend_sees_the_first_ones_requests(cluster, ["--discovery", "etcd", "--etcd-endpoints", etcd_server.url,
                                                            "--event-plane", "tcp"])


def _second_frontend_sees_the_first_ones_requests(cluster, planes: list[str]) -> None:
    first, base_a = cluster.frontend("--router", "kv", *planes)
    _, base_b = cluster.frontend("--router", "kv", *planes)
    # Prefill at 100 tokens/s: a 400-token prompt waits 4 s for its first token, long enough to see.
    for _ in range(2):
        cluster.start("worker", "--engine", "mocker", "--prefill-tokens-per-s", "100", *planes)
    wait_until(lambda: _instances(base_a) == 2 and _instances(base_b) == 2, 60)

    def send_to_a() -> None:
        try:
            _post(f"{base_a}/v1/completions", {"model": "mocker", "prompt": _prompt(1), "max_tokens": 2})
        except OSError:
            pass  # a is killed below, mid-request

    threading.Thread(target=send_to_a, daemon=True).start()
    # Frontend b learns where a sent its request, with a's uncached tokens queued there...
    scores = wait_until(lambda: (s := _queued(base_b, 2)) and any(w["queued_prefill_tokens"] for w in s.values()) and s,
                        10)
    [(busy, queued)] = [(w, s["queued_prefill_tokens"]) for w, s in scores.items() if s["queued_prefill_tokens"]]
    assert queued == PROMPT_TOKENS
    # ...and puts its own next request on the other worker.
    [chosen] = [w for w, s in scores.items() if s["chosen"]]
    assert chosen != busy

    # a dies mid-request: without its heartbeats b drops a's request from the load it counts.
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    wait_until(lambda: not any(s["queued_prefill_tokens"] for s in _queued(base_b, 3).values()), 10)
