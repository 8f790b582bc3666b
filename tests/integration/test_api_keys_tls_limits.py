"""The frontend's protection: API keys, HTTPS with a certificate made here, body and in-flight limits.

One `dynamo serve` over TLS with a key, a small body limit and `--max-inflight 2`, spoken to by
the openai client (trusting the test's CA bundle) and by raw sockets.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import httpx
import openai
import pytest

from conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(120)
KEY = "sk-test-0123456789"


def _self_signed(tmp_path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def _get(url: str, cafile: str, headers: dict | None = None) -> tuple[int, dict | str, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    context = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            body, status, got = response.read().decode(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        body, status, got = exc.read().decode(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(body), got
    except ValueError:
        return status, body, got


@pytest.fixture
def guarded(cluster, mistral_tokenizer_dir, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    serve = cluster.start(
        "serve", "--workers", "1", "--http-port", str(port), "--model", str(mistral_tokenizer_dir),
        "--model-name", "test-model", "--speedup-ratio", "2", "--tls-cert", cert, "--tls-key", key,
        "--api-key", KEY, "--max-body-bytes", "4096", "--max-inflight", "2",
    )
    base = f"https://127.0.0.1:{port}"

    def ready():
        try:
            status, body, _ = _get(f"{base}/health", cert)
        except OSError:
            return False
        return status == 200 and len(body["instances"]) == 1

    wait_until(ready, 60, serve)
    return base, cert, serve


def _client(base: str, cafile: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30,
                         http_client=httpx.Client(verify=ssl.create_default_context(cafile=cafile)))


def test_https_api_keys_and_limits(guarded):
    base, cafile, serve = guarded
    # HTTPS with the CA bundle, and the right key: served.
    client = _client(base, cafile)
    reply = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage.completion_tokens == 3
    assert [m.id for m in client.models.list()] == ["test-model"]

    # No key, a wrong key: 401 in OpenAI's shape; the open endpoints stay open.
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"}):
        status, body, got = _get(f"{base}/v1/models", cafile, headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", (headers, body)
    with pytest.raises(openai.AuthenticationError):
        _client(base, cafile, "sk-wrong").models.list()
    for path in ("/health", "/live", "/metrics"):
        assert _get(f"{base}{path}", cafile)[0] == 200, path
    # The key never reaches the logs or the frontend's command line.
    assert KEY not in serve.output()

    # A body over --max-body-bytes: 413 in OpenAI's shape.
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="test-model", prompt="x" * 10_000, max_tokens=1)
    assert caught.value.status_code == 413 and caught.value.body["type"] == "invalid_request_error"

    # Announced as 100 MB and never sent: answered at once, not after reading it.
    context = ssl.create_default_context(cafile=cafile)
    host, port = base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Authorization: Bearer {KEY}\r\nContent-Length: 100000000\r\n\r\n".encode() + b"{" * 1000)
        started = time.monotonic()
        head = tls.recv(65536).decode(errors="replace")
        assert head.startswith("HTTP/1.1 413"), head
        assert time.monotonic() - started < 5

    # Two streams in flight fill --max-inflight 2: the third gets 429 with Retry-After.
    started = threading.Semaphore(0)
    finished: list[int] = []

    def long_stream():
        stream = client.completions.create(model="test-model", prompt="long", max_tokens=100, stream=True)
        for i, _ in enumerate(stream):
            if i == 0:
                started.release()
        finished.append(1)

    threads = [threading.Thread(target=long_stream) for _ in range(2)]
    for t in threads:
        t.start()
    assert started.acquire(timeout=30) and started.acquire(timeout=30)
    status, body, headers = _get_post(base, cafile)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded", body
    assert headers.get("retry-after") == "1"
    for t in threads:
        t.join(60)
    assert len(finished) == 2
    # The slots are free again, also after a client that left mid-stream.
    stream = client.completions.create(model="test-model", prompt="x", max_tokens=100, stream=True)
    next(iter(stream))
    stream.close()

    def admitted() -> bool:
        try:
            return client.completions.create(model="test-model", prompt="y", max_tokens=2).usage.completion_tokens == 2
        except openai.RateLimitError:
            return False  # the server has not yet seen that client leave

    for _ in range(3):
        wait_until(admitted, 10)


def _get_post(base: str, cafile: str) -> tuple[int, dict, dict]:
    with httpx.Client(verify=ssl.create_default_context(cafile=cafile)) as http:
        response = http.post(f"{base}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                             json={"model": "test-model", "prompt": "third", "max_tokens": 2})
    return response.status_code, response.json(), {k.lower(): v for k, v in response.headers.items()}


def test_serve_in_one_process_over_tls_prints_an_https_url(cluster, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    serve = cluster.start("serve", "--discovery", "mem", "--http-port", str(port), "--tls-cert", cert, "--tls-key", key)
    wait_until(lambda: "dynamo serving on" in serve.output(), 60, serve)
    assert f"dynamo serving on https://127.0.0.1:{port}/v1" in serve.output()

    def live() -> bool:
        try:
            return _get(f"https://127.0.0.1:{port}/live", cert)[0] == 200
        except OSError:
            return False
    wait_until(live, 30, serve)
