"""Fault-injection benchmark: what a worker crash, a rolling restart and 1,000 concurrent streams
cost the clients of one `dynamo serve` (mocker workers), and the frontend's memory meanwhile.

Each scenario starts its own `dynamo serve` (free port, private discovery dir), sends streaming
chat requests through `client.StreamClient` and counts them: sent / completed whole (HTTP 200,
[DONE], `completion_tokens == max_tokens`) / failed with a clear error / lost (ended short
without an error). Scenarios:

- `kill`: N workers (default 3), C streams (default 64) in flight, kill -9 of one worker.
- `rolling`: closed-loop load at C while every worker in turn gets SIGTERM (serve restarts it).
- `memory`: S concurrent streams (default 1,000) through one frontend; the frontend's resident
  memory before, at its peak, and after.

    uv run python -m benchmarks.fault_bench --scenarios kill,rolling,memory
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import StreamClient
from benchmarks.records import RequestRecord
from benchmarks.report import markdown_table, run_async


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """One `dynamo serve` for a scenario."""

    def __init__(self, workers: int, extra: list[str], log_dir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DYN_FILE_DISCOVERY_DIR": tempfile.mkdtemp(prefix="fault-bench-"),
               "DYN_NAMESPACE": f"faultbench{os.getpid()}{self.port}"}
        self.log = open(log_dir / f"serve-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynamo_core.cli.main", "serve", "--workers", str(workers), "--http-port",
             str(self.port), *extra], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.workers = workers

    def instances(self) -> list[dict]:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).json().get("instances", [])
        except (httpx.HTTPError, ValueError):
            return []

    async def ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.instances()) < self.workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"dynamo serve did not come up; see {self.log.name}")
            await asyncio.sleep(0.25)

    def frontend_rss_mb(self) -> float:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in children:
            try:
                if b"frontend" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            return int(line.split()[1]) / 1024
            except OSError:
                continue
        return float("nan")

    def counters(self, name: str) -> dict[str, float]:
        """A counter of the frontend's by its `reason` label (migrations, reroutes)."""
        page = httpx.get(f"{self.url}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for line in page.splitlines():
            if line.startswith(f"dynamo_frontend_{name}_total{{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = out.get(reason, 0) + float(line.rsplit(" ", 1)[1])
        return out

    def first_tokens(self) -> float:
        """Requests that have had their first token (the TTFT histogram's count)."""
        page = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                   if line.startswith("dynamo_frontend_time_to_first_token_seconds_count"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _body(max_tokens: int, i: int) -> dict[str, Any]:
    return {"model": "mocker", "messages": [{"role": "user", "content": f"story {i}"}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}


def _tally(name: str, records: list[RequestRecord], max_tokens: int, **extra) -> dict[str, Any]:
    whole = sum(1 for r in records if r.ok and r.output_tokens == max_tokens)
    failed = sum(1 for r in records if not r.ok)
    row = {"scenario": name, "sent": len(records), "whole": whole, "failed": failed,
           "lost": len(records) - whole - failed, **extra}
    errors = sorted({r.error for r in records if r.error})[:3]
    if errors:
        row["errors"] = "; ".join(errors)
    return row


async def kill_scenario(args, log_dir: Path) -> dict[str, Any]:
    serve = Serve(args.workers, ["--speedup-ratio", str(args.speedup), "--router", "least-loaded"], log_dir)
    try:
        await serve.ready()
        client = StreamClient(serve.url, args.concurrency)
        tasks = [asyncio.create_task(client.stream("/v1/chat/completions", _body(args.max_tokens, i)))
                 for i in range(args.concurrency)]
        while serve.first_tokens() < args.concurrency:  # every stream is producing tokens
            await asyncio.sleep(0.05)
        victim = max(serve.instances(), key=lambda i: i["in_flight"])
        os.kill(victim["pid"], signal.SIGKILL)
        records = await asyncio.gather(*tasks)
        await client.aclose()
        return _tally(f"kill -9 1 of {args.workers} workers, {args.concurrency} streams", records, args.max_tokens,
                      victim_streams=victim["in_flight"], migrations=serve.counters("migrations"),
                      reroutes=serve.counters("reroutes"))
    finally:
        serve.stop()


async def rolling_scenario(args, log_dir: Path) -> dict[str, Any]:
    serve = Serve(args.workers, ["--speedup-ratio", str(args.speedup), "--drain-timeout", str(args.drain_timeout)],
                  log_dir)
    try:
        await serve.ready()
        client = StreamClient(serve.url, args.concurrency)
        records: list[RequestRecord] = []
        stop = asyncio.Event()

        async def loop(i: int) -> None:
            while not stop.is_set():
                records.append(await client.stream("/v1/chat/completions", _body(args.max_tokens, i)))

        loops = [asyncio.create_task(loop(i)) for i in range(args.concurrency)]
        await asyncio.sleep(1.0)
        for instance in serve.instances():
            os.kill(instance["pid"], signal.SIGTERM)
            while True:  # until serve's replacement registered
                now = serve.instances()
                if len(now) == args.workers and instance["pid"] not in {i["pid"] for i in now}:
                    break
                await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*loops)
        await client.aclose()
        return _tally(f"rolling restart of {args.workers} workers at {args.concurrency} streams", records,
                      args.max_tokens, migrations=serve.counters("migrations"), reroutes=serve.counters("reroutes"))
    finally:
        serve.stop()


async def memory_scenario(args, log_dir: Path) -> dict[str, Any]:
    serve = Serve(args.workers, ["--speedup-ratio", str(args.memory_speedup), "--max-num-seqs", "1024"], log_dir)
    try:
        await serve.ready()
        client = StreamClient(serve.url, args.streams)
        before = serve.frontend_rss_mb()
        peak = before
        tasks = [asyncio.create_task(client.stream("/v1/chat/completions", _body(args.memory_tokens, i)))
                 for i in range(args.streams)]
        while not all(t.done() for t in tasks):
            peak = max(peak, serve.frontend_rss_mb())
            await asyncio.sleep(0.2)
        records = [t.result() for t in tasks]
        await client.aclose()
        await asyncio.sleep(1.0)
        return _tally(f"{args.streams} concurrent streams", records, args.memory_tokens,
                      most_in_flight=_most_at_once(records), rss_before_mb=round(before), rss_peak_mb=round(peak),
                      rss_after_mb=round(serve.frontend_rss_mb()))
    finally:
        serve.stop()


def _most_at_once(records: list[RequestRecord]) -> int:
    """The most requests that were open at the same moment (from their start and end times)."""
    events = sorted([(r.start, 1) for r in records] + [(r.end or r.start, -1) for r in records])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


SCENARIOS = {"kill": kill_scenario, "rolling": rolling_scenario, "memory": memory_scenario}


async def main(args) -> None:
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.scenarios.split(","):
        row = await SCENARIOS[name](args, log_dir)
        print(row, flush=True)
        rows.append(row)
    columns = [("scenario", "scenario", "s"), ("sent", "sent", "d"), ("whole", "completed whole", "d"),
               ("failed", "failed (error)", "d"), ("lost", "lost", "d")]
    print(markdown_table(rows, columns))
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in {c[0] for c in columns}}
        print(f"- {row['scenario']}: {extra}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="kill,rolling,memory", help="comma-separated: kill, rolling, memory")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64, help="streams in flight (kill, rolling)")
    p.add_argument("--max-tokens", type=int, default=200, help="tokens per request (kill, rolling)")
    p.add_argument("--speedup", type=float, default=1.0, help="mocker --speedup-ratio (kill, rolling)")
    p.add_argument("--drain-timeout", type=float, default=1.0, help="workers' --drain-timeout (rolling)")
    p.add_argument("--streams", type=int, default=1000, help="concurrent streams (memory)")
    p.add_argument("--memory-tokens", type=int, default=100, help="tokens per request (memory)")
    p.add_argument("--memory-speedup", type=float, default=5.0, help="mocker --speedup-ratio (memory)")
    p.add_argument("--log-dir", default="bench-results/fault", help="where each serve's log goes")
    run_async(main(p.parse_args()))
