"""`--http-workers N`: N real frontend processes serve one port, route as one, report their
metrics summed, are restarted when one dies, and stop together."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request

import pytest

from conftest import free_port, http_get, wait_until

pytestmark = pytest.mark.timeout(180)


def _post(url: str, body: dict, timeout: float = 30.0) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _answering_pids(base: str, tries: int = 60) -> set[int]:
    """The pids behind `/live`, each asked on a new connection (new source port, so the
    kernel's SO_REUSEPORT hash may pick another process)."""
    return {http_get(f"{base}/live")[1]["pid"] for _ in range(tries)}


def _status(url: str) -> int | None:
    try:
        return http_get(url, timeout=2)[0]
    except OSError:
        return None


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def _requests_total(base: str) -> float:
    text = http_get(f"{base}/metrics")[1]
    return sum(float(v) for v in re.findall(r'^dynamo_frontend_requests_total\{[^}]*status="ok"[^}]*\} (\S+)$',
                                              text, re.M))


def _ready_instances(base: str) -> int:
    try:
        return len(http_get(f"{base}/health", timeout=2)[1].get("instances", []))
    except (OSError, AttributeError):
        return 0


def test_two_http_workers_serve_one_port_from_both_processes(cluster):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    frontend = cluster.start("frontend", "--http-port", str(port), "--http-workers", "2")
    cluster.start("worker", "--engine", "mocker")
    wait_until(lambda: "all 2 HTTP processes ready" in frontend.output(), 60, frontend)
    children = _children(frontend.pid)
    assert len(children) == 2
    # Every process has found the worker (each watches discovery on its own).
    wait_until(lambda: all(_ready_instances(base) == 1 for _ in range(10)), 30)

    assert _answering_pids(base) == children

    # Requests on new connections land on both; /metrics from either counts them all.
    sent = 20
    for i in range(sent):
        reply = _post(f"{base}/v1/chat/completions",
                      {"model": "mocker", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 3})
        assert reply["choices"][0]["message"]["content"]
    assert {_requests_total(base) for _ in range(6)} == {float(sent)}
    # Multiprocess mode has no process metrics of its own: the CPU of the N is summed in.
    assert re.search(r"^process_cpu_seconds_total [1-9]", http_get(f"{base}/metrics")[1], re.M)

    # A killed process is restarted; the port keeps serving meanwhile.
    victim = min(children)
    os.kill(victim, signal.SIGKILL)
    # (A connection the kernel queued on the victim as it died is reset: ask again.)
    wait_until(lambda: _status(f"{base}/health") == 200, 10)
    wait_until(lambda: "restarting it" in frontend.output() and len(_children(frontend.pid)) == 2
               and victim not in _children(frontend.pid), 30, frontend)
    survivors = _children(frontend.pid)
    wait_until(lambda: _answering_pids(base, 30) == survivors, 30)

    # SIGINT (Ctrl-C) stops every process.
    frontend.proc.send_signal(signal.SIGINT)
    assert frontend.proc.wait(30) == 0
    for pid in survivors:
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read(), 10)


@pytest.mark.timeout(400)
def test_http_workers_fail_loudly_when_every_start_fails(cluster, tmp_path):
    """Children that cannot start (a certificate that is not PEM: the supervisor only checks
    that the file exists) are given up on after a few quick deaths: the command exits non-zero."""
    garbage = tmp_path / "not-a-cert.pem"
    garbage.write_text("not a certificate\n")
    frontend = cluster.start("frontend", "--http-port", str(free_port()), "--http-workers", "2",
                             "--tls-cert", str(garbage), "--tls-key", str(garbage))
    assert frontend.proc.wait(300) != 0  # three starts in a row, each slow on a busy host
    assert "stopping the frontend" in frontend.output()


def test_serve_passes_http_workers_to_its_frontend(cluster):
    serve, base = cluster.serve("--http-workers", "2", workers=1)
    wait_until(lambda: len(_answering_pids(base, 30)) == 2, 30, serve)
    reply = _post(f"{base}/v1/completions", {"model": "mocker", "prompt": "hello", "max_tokens": 2})
    assert reply["choices"][0]["text"]


def test_http_workers_route_as_one_with_the_kv_router(cluster):
    """A request one process routed weighs on its worker in every process's view: the
    siblings learn it over the routing peers (loopback UDP through file discovery)."""
    import threading

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    frontend = cluster.start("frontend", "--http-port", str(port), "--http-workers", "2", "--router", "kv")
    # Prefill at 10 tokens/s: a 400-token prompt waits 40 s for its first token, so on a loaded
    # CI machine the views below still find it queued (at 25 tokens/s, 16 s, they once did not).
    for _ in range(2):
        cluster.start("worker", "--engine", "mocker", "--prefill-tokens-per-s", "10")
    wait_until(lambda: "all 2 HTTP processes ready" in frontend.output(), 60, frontend)
    wait_until(lambda: all(_ready_instances(base) == 2 for _ in range(10)), 30)
    prompt = [(t * 7) % 250 + 3 for t in range(400)]
    threading.Thread(target=lambda: _post(f"{base}/v1/completions", {"model": "mocker", "prompt": prompt,
                                                                       "max_tokens": 2}), daemon=True).start()

    def queued_views() -> list[list[int]]:
        probe = {"model": "mocker", "prompt": [(t * 11) % 250 + 3 for t in range(400)], "max_tokens": 1}
        return [sorted(w["queued_prefill_tokens"] for w in _post(f"{base}/debug/routing", probe)["workers"].values())
                for _ in range(20)]

    # Twenty views on new connections (both processes answer some): every one sees the 400 tokens.
    views = wait_until(lambda: (v := queued_views()) and all(view == [0, 400] for view in v) and v, 30)
    assert len(views) == 20
