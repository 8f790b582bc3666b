"""`dynamo serve --router kv` with real mocker workers: prefixes follow their cache."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read().decode()
    return json.loads(raw) if raw.startswith(("{", "[")) else raw


def _serve(tmp_path, *args):
    port = _free_port()
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp_path), DYN_NAMESPACE=f"kv{port}")
    proc = subprocess.Popen(DYNAMO + ["serve", "--router", "kv", "--http-port", str(port), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if len(_call(f"{base}/health")["instances"]) == 4:
                return proc, base
        except OSError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "serve did not come up"
        time.sleep(0.2)


def _worker_of(base: str, prompt: list[int]) -> tuple[str, dict]:
    scores = _call(f"{base}/debug/routing", {"model": "mocker", "prompt": prompt})["workers"]
    best = max(scores, key=lambda w: scores[w]["overlap_blocks"])
    return best, scores


def test_repeated_prefixes_follow_their_cache_and_unique_ones_spread(tmp_path):
    proc, base = _serve(tmp_path, "--workers", "4")
    try:
        # Unique prompts sent at once spread evenly: each decision sees the load of the
        # earlier ones, which are still decoding (100 tokens at ~7 ms a step).
        def unique(i: int) -> None:
            prompt = [(i * 97 + t) % 250 + 3 for t in range(64)]
            _call(f"{base}/v1/completions", {"model": "mocker", "prompt": prompt, "max_tokens": 100, "ignore_eos": True})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(unique, range(8)))
        decisions = Counter()
        for line in _call(f"{base}/metrics").splitlines():
            if line.startswith("dynamo_router_kv_decisions_total{"):
                decisions[line.split('worker="')[1].split('"')[0]] += float(line.rsplit(" ", 1)[1])
        assert len(decisions) == 4 and all(v == 2 for v in decisions.values()), decisions

        # A long shared prefix, sent once; its KV events reach the router's index...
        shared = [(t * 7) % 250 + 3 for t in range(512)]
        _call(f"{base}/v1/completions", {"model": "mocker", "prompt": shared + [5, 6], "max_tokens": 2})
        deadline = time.monotonic() + 10
        while True:
            holder, scores = _worker_of(base, shared + [9, 9])
            if scores[holder]["overlap_blocks"] == 32:
                break
            assert time.monotonic() < deadline, scores
            time.sleep(0.1)
        assert sum(s["overlap_blocks"] > 0 for s in scores.values()) == 1
        # ...and every later request with that prefix goes to the worker that holds it.
        for i in range(6):
            reply = _call(f"{base}/v1/completions",
                          {"model": "mocker", "prompt": shared + [i + 3, 4], "max_tokens": 2, "stream": False})
            assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] >= 496, reply["usage"]
        metrics = _call(f"{base}/metrics")
        assert f'dynamo_router_kv_decisions_total{{model="mocker",worker="{holder}"}} 9.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_disaggregated_prefills_follow_their_cache_among_prefill_workers(tmp_path):
    proc, base = _serve(tmp_path, "--disagg", "--prefill-workers", "2", "--decode-workers", "2",
                        "--disagg-min-prompt-tokens", "64", "--speedup-ratio", "20")
    try:
        shared = [(t * 11) % 250 + 3 for t in range(512)]
        replies = []
        for i in range(4):
            replies.append(_call(f"{base}/v1/completions",
                                 {"model": "mocker", "prompt": shared + [i + 3, 4], "max_tokens": 3}))
            time.sleep(0.3)  # the prefill worker's KV events reach the prefill router's index
        # Every prefill after the first found the prefix cached: they all went to one prefill
        # worker (round-robin over two would have sent the second elsewhere).
        assert [r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in replies[1:]] == [512] * 3, replies
        metrics = _call(f"{base}/metrics")
        assert 'dynamo_frontend_disagg_requests_total{model="mocker"} 4.0' in metrics
        prefill_decisions = [line for line in metrics.splitlines()
                             if line.startswith("dynamo_router_kv_decisions_total{") and not line.endswith(" 0.0")]
        assert len(prefill_decisions) >= 2, prefill_decisions  # prefill and decode pools decide apart
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
