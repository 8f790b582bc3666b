"""The benchmark tools' statistics and stream accounting, without a dynamo server."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The benchmarks are scripts of the repository, not an installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.client import StreamClient  # noqa: E402
from benchmarks.prometheus import gc_collections, prometheus_value  # noqa: E402
from benchmarks.records import RequestRecord, SseAccountant  # noqa: E402
from benchmarks.report import append_json_lines, markdown_table  # noqa: E402
from benchmarks.stats import percentile, summarize, tpot_ms  # noqa: E402
from benchmarks.gateway_table import table as gateway_table  # noqa: E402
from benchmarks.proc_cpu import cpu_used, matching_cpu, tree_cpu_seconds  # noqa: E402
from benchmarks.loadgen import Level, PromptFactory, arrival_gaps, measured_records, request_marker  # noqa: E402
from benchmarks.trace_replay import PromptBuilder, TraceRequest, ideal_hit_rate, scaled_requests  # noqa: E402


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chat_chunk(content: str, usage: dict | None = None) -> bytes:
    return _sse({"choices": [{"index": 0, "delta": {"content": content}}], "usage": usage})


def _usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "prompt_tokens_details": {"cached_tokens": cached}}


# ---------------------------------------------------------------------------------------------
# percentiles and summaries
# ---------------------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks_like_numpy():
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(values, 0) == 15.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 40) == pytest.approx(29.0)  # numpy.percentile(values, 40)
    assert percentile(values, 99) == pytest.approx(49.6)


def test_percentile_ignores_input_order_and_handles_one_or_no_values():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_summary_counts_errors_but_times_only_successful_requests():
    ok = [RequestRecord(start=0.0, ttft=0.010 * i, end=0.1 * i, itl=[0.001, 0.003], output_tokens=10,
                        content_chunks=5, prompt_tokens=100, cached_tokens=25, usage_reported=True)
          for i in (1, 2, 3)]
    failed = RequestRecord(start=0.0, ttft=5.0, end=9.0, error="HTTP 503: busy")
    row = summarize([*ok, failed], wall_s=2.0)
    assert row["requests"] == 4 and row["errors"] == 1
    assert row["req_per_s"] == pytest.approx(1.5)
    assert row["output_tok_per_s"] == pytest.approx(15.0)
    assert row["ttft_p50_ms"] == pytest.approx(20.0)
    assert row["e2e_p99_ms"] == pytest.approx(298.0)
    assert row["itl_p50_ms"] == pytest.approx(2.0)
    assert row["prefix_hit_rate"] == pytest.approx(0.25)
    assert row["tokens_per_chunk"] == pytest.approx(2.0)
    assert row["error_samples"] == ["1x HTTP 503: busy"]


def test_summary_of_nothing_is_nan_not_an_exception():
    row = summarize([], wall_s=0.0)
    assert row["requests"] == 0 and math.isnan(row["req_per_s"]) and math.isnan(row["ttft_p50_ms"])


def test_markdown_table_prints_missing_and_nan_as_dashes(tmp_path):
    columns = [("name", "name", "s"), ("rate", "req/s", ".1f"), ("hit", "hit", ".0%")]
    table = markdown_table([{"name": "kv", "rate": 12.345, "hit": math.nan}, {"name": "rr"}], columns)
    assert table.splitlines() == [
        "| name | req/s | hit |",
        "| --- | ---: | ---: |",
        "| kv | 12.3 | - |",
        "| rr | - | - |",
    ]
    out = tmp_path / "rows.jsonl"
    append_json_lines(str(out), [{"hit": math.nan, "nested": [math.nan, 1.0]}])
    append_json_lines(str(out), [{"hit": 0.5}])
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"hit": None, "nested": [None, 1.0]}, {"hit": 0.5},
    ]


def test_prometheus_value_reads_the_unlabelled_sample():
    text = (
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 12.5\n"
        'process_cpu_seconds_total_other{a="b"} 3\n'
    )
    assert prometheus_value(text, "process_cpu_seconds_total") == 12.5
    assert prometheus_value(text, "missing_metric") is None


# ---------------------------------------------------------------------------------------------
# stream accounting
# ---------------------------------------------------------------------------------------------


def test_gc_collections_reads_each_generation_or_none():
    text = (
        '# TYPE python_gc_collections_total counter\n'
        'python_gc_collections_total{generation="0"} 140.0\n'
        'python_gc_collections_total{generation="1"} 12.0\n'
        'python_gc_collections_total{generation="2"} 1.0\n'
        'python_gc_objects_collected_total{generation="0"} 999.0\n'
    )
    assert gc_collections(text) == [140.0, 12.0, 1.0]
    assert gc_collections("process_cpu_seconds_total 1.0\n") is None


def test_accountant_reads_tokens_from_usage_whatever_the_read_boundaries():
    stream = (
        _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        + _chat_chunk("Hel") + _chat_chunk("lo") + _chat_chunk("!")
        + _sse({"choices": [], "usage": _usage(prompt=30, completion=4, cached=16)})
        + b"data: [DONE]\n\n"
    )
    accountant = SseAccountant(start=0.0)
    for i in range(0, len(stream), 7):  # reads that cut lines anywhere
        accountant.feed(stream[i:i + 7])
    record = accountant.finish(200)
    assert record.ok and record.ttft is not None
    assert (record.output_tokens, record.prompt_tokens, record.cached_tokens) == (4, 30, 16)
    assert record.content_chunks == 3 and len(record.itl) == 2  # the role-only chunk has no content


def test_accountant_spreads_a_gap_over_the_tokens_a_chunk_carried():
    accountant = SseAccountant(start=0.0)
    accountant.feed(_chat_chunk("a", _usage(5, 1)))
    accountant.feed(_chat_chunk("bcd", _usage(5, 4)))  # continuous usage: 3 tokens in one chunk
    accountant.feed(b"data: [DONE]\n\n")
    record = accountant.finish(200)
    assert len(record.itl) == 3 and len(set(record.itl)) == 1
    assert record.output_tokens == 4


def test_accountant_counts_text_completion_chunks_and_falls_back_to_chunk_count():
    accountant = SseAccountant(start=0.0)
    accountant.feed(_sse({"choices": [{"index": 0, "text": "x"}]}) + _sse({"choices": [{"index": 0, "text": "y"}]}))
    accountant.feed(b"data: [DONE]\n\n")
    record = accountant.finish(200)
    assert record.ok and record.output_tokens == 2 and not record.usage_reported


def test_accountant_records_errors_in_band_out_of_band_and_truncation():
    in_band = SseAccountant(start=0.0)
    in_band.feed(_chat_chunk("a") + _sse({"error": {"message": "worker died", "type": "internal_error"}}))
    in_band.feed(b"data: [DONE]\n\n")
    assert in_band.finish(200).error == "worker died"

    status = SseAccountant(start=0.0)
    status.feed(b'{"error": {"message": "no such model"}}')
    assert status.finish(404).error.startswith('HTTP 404: {"error"')

    truncated = SseAccountant(start=0.0)
    truncated.feed(_chat_chunk("a"))
    assert truncated.finish(200).error == "stream ended without [DONE]"


# ---------------------------------------------------------------------------------------------
# the raw HTTP/1.1 transport, against a loopback server
# ---------------------------------------------------------------------------------------------


async def _sse_server(events: list[bytes], close_after_each: bool) -> tuple[asyncio.Server, list[int]]:
    """Answer every POST with `events` as HTTP chunks; optionally drop the connection after."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while request_line := await reader.readline():
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            await reader.readexactly(length)
            assert request_line.startswith(b"POST /v1/chat/completions ")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for event in events:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            if close_after_each:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), connections


@pytest.mark.parametrize("transport", ["raw", "httpx"])
async def test_stream_client_reuses_one_connection_and_reconnects_when_the_server_drops_it(transport):
    events = [_chat_chunk("a"), _chat_chunk("b"), _sse({"choices": [], "usage": _usage(3, 2)}), b"data: [DONE]\n\n"]
    for close_after_each, expected_connections in ((False, 1), (True, 3)):
        server, connections = await _sse_server(events, close_after_each)
        port = server.sockets[0].getsockname()[1]
        client = StreamClient(f"http://127.0.0.1:{port}", max_connections=1, transport=transport, timeout_s=10)
        try:
            records = [await client.stream("/v1/chat/completions", {"model": "m"}) for _ in range(3)]
            if close_after_each:
                await asyncio.sleep(0.05)  # let the close reach the idle connection
                records.append(await client.stream("/v1/chat/completions", {"model": "m"}))
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        assert all(r.ok and r.output_tokens == 2 for r in records), [r.error for r in records]
        assert len(connections) == expected_connections + (1 if close_after_each else 0)


# ---------------------------------------------------------------------------------------------
# load generator and trace replay helpers
# ---------------------------------------------------------------------------------------------


def test_prompts_have_a_fixed_word_count_share_prefixes_and_start_unique_after_them():
    factory = PromptFactory(words=40, prefix_words=10, prefix_groups=2, seed=1)
    prompts = [factory.next().split() for _ in range(200)]
    assert {len(p) for p in prompts} == {40}
    assert len({tuple(p[:10]) for p in prompts}) == 2
    assert len({tuple(p[10:14]) for p in prompts}) == 200
    assert len({tuple(request_marker(i)) for i in range(5000)}) == 5000


def test_duration_mode_counts_requests_that_ended_inside_the_window():
    level = Level(warm_until=10.0, stop_at=20.0, max_requests=None)
    records = [
        ("warmup", RequestRecord(start=9.0, end=10.5)),  # started warming up, ended in the window
        ("measured", RequestRecord(start=12.0, end=13.0)),
        ("measured", RequestRecord(start=19.5, end=20.5)),  # drained after the window
        ("warmup", RequestRecord(start=8.0, end=9.5)),
    ]
    counted, window = measured_records(records, level)
    assert [r.start for r in counted] == [9.0, 12.0] and window == 10.0


def test_request_mode_counts_exactly_the_requests_started_after_warmup():
    level = Level(warm_until=0.0, stop_at=None, max_requests=3)
    phases = [level.next_phase() for _ in range(5)]
    assert phases == ["measured", "measured", "measured", None, None]
    records = [("warmup", RequestRecord(start=0.0, end=1.0)), ("measured", RequestRecord(start=1.0, end=2.0)),
               ("measured", RequestRecord(start=1.5, end=4.0))]
    counted, window = measured_records(records, level)
    assert len(counted) == 2 and window == 3.0


def _trace_args(**overrides) -> argparse.Namespace:
    values = {"token_scale": 1 / 16, "time_scale": 2.0, "max_output_tokens": None}
    return argparse.Namespace(**(values | overrides))


def test_trace_requests_scale_lengths_and_times():
    rows = [{"index": 0, "timestamp": 1000, "input_length": 1000, "output_length": 100, "hash_ids": [0, 1]},
            {"index": 1, "timestamp": 3000, "input_length": 600, "output_length": 1, "hash_ids": [0, 2]}]
    first, second = scaled_requests(rows, _trace_args(max_output_tokens=5))
    assert (first.at, first.input_tokens, first.output_tokens) == (0.0, 62, 5)
    assert (second.at, second.input_tokens, second.output_tokens) == (1.0, 38, 1)


def test_equal_hash_ids_give_equal_token_runs_and_prompts_have_the_exact_length():
    builder = PromptBuilder(block_tokens=32, token_lo=3, token_hi=250)
    a = builder.prompt(TraceRequest(index=0, at=0.0, input_tokens=70, output_tokens=1, hash_ids=(7, 8, 9)))
    b = builder.prompt(TraceRequest(index=1, at=0.0, input_tokens=40, output_tokens=1, hash_ids=(7, 5)))
    assert len(a) == 70 and len(b) == 40
    assert a[:32] == b[:32] and a[32:40] != b[32:40]
    assert min(a + b) >= 3 and max(a + b) < 250
    short = builder.prompt(TraceRequest(index=2, at=0.0, input_tokens=50, output_tokens=1, hash_ids=(7,)))
    assert len(short) == 50 and short[:32] == a[:32]


def test_ideal_hit_rate_counts_only_leading_blocks_seen_before():
    requests = [
        TraceRequest(index=0, at=0.0, input_tokens=64, output_tokens=1, hash_ids=(1, 2)),
        TraceRequest(index=1, at=0.0, input_tokens=48, output_tokens=1, hash_ids=(1, 2)),  # 32 + 16 cut
        TraceRequest(index=2, at=0.0, input_tokens=64, output_tokens=1, hash_ids=(3, 2)),  # no prefix
    ]
    assert ideal_hit_rate(requests, block_tokens=32) == pytest.approx(48 / 176)


async def test_a_refused_connection_is_a_recorded_error_without_a_status():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = StreamClient(f"http://127.0.0.1:{port}", max_connections=1, timeout_s=5)
    try:
        record = await client.stream("/v1/chat/completions", {"model": "m"})
    finally:
        await client.aclose()
    assert record.status is None and record.error is not None and record.error.startswith("ConnectionRefusedError")


def test_block_contents_differ_between_traces_that_reuse_the_same_ids():
    request = TraceRequest(index=0, at=0.0, input_tokens=32, output_tokens=1, hash_ids=(0,))
    conversation = PromptBuilder(block_tokens=32, token_lo=3, token_hi=250, salt="conversation_trace.jsonl")
    synthetic = PromptBuilder(block_tokens=32, token_lo=3, token_hi=250, salt="synthetic_trace.jsonl")
    assert conversation.prompt(request) != synthetic.prompt(request)
    assert conversation.prompt(request) == PromptBuilder(32, 3, 250, salt="conversation_trace.jsonl").prompt(request)


def test_every_benchmark_uses_the_one_percentile_definition():
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    defining = sorted(p.name for p in benchmarks.glob("*.py") if "def percentile(" in p.read_text())
    assert defining == ["stats.py"]
    assert percentile([1, 2, 3, 4], 50) == 2.5  # interpolated between ranks, as numpy's default


# ---------------------------------------------------------------------------------------------
# time per output token, open-loop arrivals, CPU of other processes
# ---------------------------------------------------------------------------------------------


def test_tpot_is_decode_time_over_the_tokens_after_the_first_one_value_a_request():
    fast = [RequestRecord(start=0.0, ttft=0.1, end=0.1 + 0.063, output_tokens=64) for _ in range(99)]
    slow = RequestRecord(start=0.0, ttft=0.1, end=0.1 + 0.63, output_tokens=64)  # 10 ms a token
    one_token = RequestRecord(start=0.0, ttft=0.1, end=0.2, output_tokens=1)  # no decode time to divide
    assert tpot_ms(slow) == pytest.approx(10.0)
    assert tpot_ms(one_token) is None
    row = summarize([*fast, slow, one_token], wall_s=1.0)
    assert row["tpot_p50_ms"] == pytest.approx(1.0)
    # p99 of 100 values sits at rank 98.01: 1% of the way from the 99th to the slow 100th.
    assert row["tpot_p99_ms"] == pytest.approx(1.0 + 0.01 * 9.0)
    assert summarize([fast[0], slow], wall_s=1.0)["tpot_p99_ms"] == pytest.approx(1.0 + 0.99 * 9.0)
    assert math.isnan(summarize([one_token], wall_s=1.0)["tpot_p50_ms"])


def test_arrival_gaps_average_to_the_rate_poisson_or_fixed():
    fixed = list(itertools.islice(arrival_gaps(20.0, "fixed", random.Random(0)), 100))
    assert set(fixed) == {0.05}
    poisson = list(itertools.islice(arrival_gaps(20.0, "poisson", random.Random(0)), 20000))
    assert statistics.fmean(poisson) == pytest.approx(0.05, rel=0.03)
    assert statistics.pstdev(poisson) == pytest.approx(0.05, rel=0.05)  # exponential: sd = mean


def test_cpu_of_sums_the_matching_processes_and_skips_others():
    marker = f"proc-cpu-test-{os.getpid()}"
    burn = f"import time; t = time.process_time(); \nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)  # {marker}"
    spinners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    # A child of a matching process counts too, though its own command line names nothing.
    child_burn = burn.replace(marker, "unnamed child")
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {child_burn!r}]); time.sleep(60)  # {marker}"])
    spinners.append(parent)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # other"])
    try:
        before = matching_cpu("nothing-matches-this-before")  # every process starts from zero
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            after = matching_cpu(re.escape(marker))
            if len(after) == 4 and cpu_used(before, after) >= 0.85:
                break
            time.sleep(0.1)
        assert {p.pid for p in spinners} < set(after) and len(after) == 4  # the third is the child
        assert 0.85 <= cpu_used(before, after) < 2.5
        assert cpu_used(after, after) == 0.0
    finally:
        for pid in set(matching_cpu(re.escape(marker))) - {p.pid for p in spinners}:
            os.kill(pid, 9)  # the child, started by its parent
        for p in (*spinners, idle):
            p.kill()
            p.wait()


def test_gateway_table_pairs_each_of_our_runs_with_dynamos_and_prints_ratios():
    def run(label: str, rps: float, cpu: float, **level) -> dict:
        return {"label": label, "req_per_s": rps, "ttft_p50_ms": 10.0, "ttft_p99_ms": 20.0, "tpot_p99_ms": 0.5,
                "cpu_of_ms_per_request": cpu, "load_average": [3.0, 2.0, 1.0], **level}

    rows = [run("c32-512 ours 1", 150, 3.0, concurrency=32), run("c32-512 dynamo 1", 100, 4.0, concurrency=32),
            run("c32-512 ours 2", 120, 3.0, concurrency=32), run("c32-512 dynamo 2", 120, 3.0, concurrency=32),
            run("r-16k ours 1", 9, 50.0, offered_rate=20.0), run("r-16k dynamo 1", 18, 40.0, offered_rate=20.0),
            run("elsewhere kv", 1, 1.0, concurrency=4)]  # not this harness's: left out
    lines = gateway_table([dict(r) for r in rows]).splitlines()
    assert len(lines) == 2 + 3
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first[:7] == ["c32-512", "32 streams", "-", "1", "150", "100", "1.50×"]
    assert first[-2:] == ["0.75×", "3.0"]  # CPU ours/Dynamo, then the load average
    assert lines[4].startswith("| r-16k | 20/s |") and "0.50×" in lines[4]


def test_tree_cpu_seconds_counts_a_child_that_burns_cpu():
    import subprocess

    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\nprint('burnt', flush=True)\ninput()"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        own_before = sum(os.times()[:2])
        assert child.stdout.readline() == b"burnt\n"
        assert tree_cpu_seconds(child.pid) >= 0.45  # /proc counts in clock ticks
        # Read from this process, the child's CPU comes through the tree; this one's own too.
        assert tree_cpu_seconds(os.getpid()) >= own_before + 0.45
    finally:
        child.communicate(b"\n", timeout=10)
