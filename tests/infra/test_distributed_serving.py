"""Serving through real etcd and NATS: worker death, server restarts, late workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import openai
import pytest

from conftest import http_get, wait_until

pytestmark = pytest.mark.timeout(240)

LEASE_TTL = 2.0


def _distributed_args(etcd_server, nats_server) -> list[str]:
    return [
        "--discovery", "etcd", "--etcd-endpoints", etcd_server.url,
        "--request-plane", "nats", "--event-plane", "nats", "--nats-url", nats_server.url,
        "--lease-ttl", str(LEASE_TTL),
    ]


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def _instances(base: str) -> list[dict]:
    try:
        status, body = http_get(f"{base}/health", timeout=2)
    except OSError:
        return []
    return body.get("instances", []) if isinstance(body, dict) else []


def test_killed_worker_leaves_within_ttl_and_no_request_hangs(cluster, etcd_server, nats_server):
    args = _distributed_args(etcd_server, nats_server)
    _, base = cluster.frontend(*args)
    for _ in range(2):
        cluster.start("worker", "--engine", "echo", "--echo-delay-ms", "20", *args)
    wait_until(lambda: len(_instances(base)) == 2, 60)
    client = _client(base)
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                stream = client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "x" * 60}], stream=True
                )
                for _ in stream:
                    pass
                outcomes.append((time.monotonic(), "ok"))
            except openai.APIError as exc:
                outcomes.append((time.monotonic(), f"error {exc}"))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: all(i["in_flight"] for i in _instances(base)) and len(outcomes) >= 2, 30)
    victim = _instances(base)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: [i["instance_id"] for i in _instances(base)] not in ([], [victim["instance_id"]])
               and victim["instance_id"] not in {i["instance_id"] for i in _instances(base)}, 15)
    assert time.monotonic() - killed < LEASE_TTL + 1.0 + 1.0  # TTL + 1 s, plus etcd's expiry tick
    left = time.monotonic()
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    errors = [(t - killed, o) for t, o in outcomes if o != "ok"]
    # Only requests in flight on the victim may fail, and they end as soon as it leaves routing.
    assert len(errors) <= 4 and all(t < left - killed + 0.5 for t, _ in errors), errors
    assert sum(o == "ok" for t, o in outcomes if t > left) >= 4


def test_system_recovers_by_itself_after_nats_and_then_etcd_restart(cluster, etcd_server, nats_server):
    args = _distributed_args(etcd_server, nats_server)
    _, base = cluster.frontend(*args)
    cluster.start("worker", "--engine", "echo", *args)
    wait_until(lambda: len(_instances(base)) == 1, 60)
    client = _client(base)

    def chat_ok() -> bool:
        try:
            reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "ping"}])
            return reply.choices[0].message.content == "ping"
        except openai.APIError:
            return False

    assert chat_ok()
    nats_server.restart(1.0)
    wait_until(chat_ok, 30)
    etcd_server.restart(LEASE_TTL + 1.0)  # long enough for the worker's lease to lapse
    wait_until(lambda: len(_instances(base)) == 1, 30)
    wait_until(chat_ok, 30)


def test_frontend_started_first_serves_503_until_a_worker_registers(cluster, etcd_server, nats_server):
    args = _distributed_args(etcd_server, nats_server)
    _, base = cluster.frontend(*args)
    with pytest.raises(openai.APIStatusError) as info:
        _client(base).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    cluster.start("worker", "--engine", "echo", *args)
    wait_until(lambda: len(_instances(base)) == 1, 60)
    reply = _client(base).chat.completions.create(model="echo", messages=[{"role": "user", "content": "late"}])
    assert reply.choices[0].message.content == "late"


def test_etcd_discovery_with_the_tcp_request_plane(cluster, etcd_server):
    args = ["--discovery", "etcd", "--etcd-endpoints", etcd_server.url]
    _, base = cluster.frontend(*args)
    cluster.start("worker", "--engine", "echo", *args)
    wait_until(lambda: len(_instances(base)) == 1, 60)
    assert _instances(base)[0]["address"].startswith("127.0.0.1:")
    reply = _client(base).chat.completions.create(model="echo", messages=[{"role": "user", "content": "mixed"}])
    assert reply.choices[0].message.content == "mixed"


def test_disaggregated_serving_over_etcd_and_nats(cluster, etcd_server, nats_server, mistral_tokenizer_dir):
    """Prefill and decode workers found through etcd, requests (and KV releases) over NATS,
    the KV itself over each worker's own transfer agent."""
    args = _distributed_args(etcd_server, nats_server)
    model = ["--model", str(mistral_tokenizer_dir), "--model-name", "m", "--speedup-ratio", "50"]
    _, base = cluster.frontend(*args, "--disagg-min-prompt-tokens", "32")
    prefill = cluster.start("worker", "--mode", "prefill", "--transfer", "nixl", *model, *args)
    cluster.start("worker", "--mode", "decode", "--transfer", "nixl", *model, *args)
    wait_until(lambda: sorted(i["role"] for i in _instances(base)) == ["decode", "prefill"], 60, prefill)
    client = _client(base)
    for topic in ("glaciers", "volcanoes"):
        reply = client.completions.create(model="m", prompt=f"Tell me about {topic}. " + "and more " * 60,
                                          max_tokens=8)
        assert reply.usage.completion_tokens == 8
    _, metrics = http_get(f"{base}/metrics")
    assert 'dynamo_frontend_disagg_requests_total{model="m"} 2.0' in metrics
    # The frontend's kv_release reached the prefill worker over NATS: it holds nothing.
    wait_until(lambda: [i["active_kv_blocks"] for i in _instances(base) if i["role"] == "prefill"] == [0], 5)
