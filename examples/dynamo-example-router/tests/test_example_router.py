"""The example plugin, installed in the environment, used through the real `dynamo serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_dynamo_plugins_lists_the_router_with_its_distribution():
    out = subprocess.run(DYNAMO + ["plugins", "--json"], capture_output=True, text=True, check=True).stdout
    rows = {(r["kind"], r["name"]): r["distribution"] for r in json.loads(out)}
    assert rows[("router", "shortest-backlog")] == "dynamo-example-router"


def test_serve_help_shows_the_plugins_option():
    out = subprocess.run(
        DYNAMO + ["serve", "--router", "shortest-backlog", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--backlog-count-requests" in out


def test_serve_routes_through_the_example_router(tmp_path):
    port = _free_port()
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp_path), DYN_NAMESPACE="example-router")
    proc = subprocess.Popen(
        DYNAMO + ["serve", "--router", "shortest-backlog", "--backlog-count-requests", "--workers", "2",
                  "--engine", "echo", "--http-port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if len(_get(f"{base}/health")["instances"]) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "serve did not come up"
            time.sleep(0.2)
        reply = _post(f"{base}/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "routed"}]})
        assert reply["choices"][0]["message"]["content"] == "routed"
        scores = _post(f"{base}/debug/routing", {"model": "echo", "prompt": "x"})
        assert len(scores["workers"]) == 2
        assert all(set(s) == {"backlog_tokens", "in_flight"} for s in scores["workers"].values())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
