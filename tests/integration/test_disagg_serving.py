"""Disaggregated serving end to end: real prefill and decode worker processes moving KV bytes
through the tcp and NIXL transfer backends, spoken to by the `openai` client."""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading

import openai
import pytest

from conftest import http_get, wait_until

pytestmark = pytest.mark.timeout(180)

KV_BYTES_PER_TOKEN = 1024


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def _metric(base: str, name: str, **labels: str) -> float:
    _, text = http_get(f"{base}/metrics")
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _long_prompt(topic: str, words: int = 60) -> str:
    return f"Tell me about {topic}. " + " ".join(f"{topic}{i}" for i in range(words))


@pytest.mark.parametrize(
    "transfer,protocol",
    [("tcp", "first-token"), ("nixl", "first-token"), ("tcp", "decode-samples-first-token")],
)
def test_disaggregated_serving_answers_the_openai_client(cluster, mistral_tokenizer_dir, transfer, protocol):
    # first-token: the client sees the prefill worker's token at once; decode-samples-first-token:
    # the decode worker samples it (as with vLLM's NIXL connector).
    extra = ["--decode-samples-first-token"] if protocol == "decode-samples-first-token" else []
    _, base = cluster.serve(
        "--disagg", "--prefill-workers", "1", "--decode-workers", "1", "--transfer", transfer,
        "--disagg-min-prompt-tokens", "32", "--model", str(mistral_tokenizer_dir), "--model-name", "m",
        "--speedup-ratio", "50", *extra, workers=2,
    )
    roles = sorted(i["role"] for i in http_get(f"{base}/health")[1]["instances"])
    assert roles == ["decode", "prefill"]
    client = _client(base)

    chat = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": _long_prompt("rivers")}], max_tokens=12)
    assert chat.choices[0].finish_reason == "length" and chat.choices[0].message.content
    assert chat.usage.completion_tokens == 12 and chat.usage.prompt_tokens > 32

    pieces = list(client.completions.create(model="m", prompt=_long_prompt("mountains"), max_tokens=9,
                                            logprobs=2, stream=True, stream_options={"include_usage": True}))
    text_chunks = [p for p in pieces if p.choices]
    assert sum(len(p.choices[0].logprobs.tokens) for p in text_chunks) == 9
    assert [p.choices[0].finish_reason for p in text_chunks if p.choices[0].finish_reason] == ["length"]
    usage = pieces[-1].usage
    assert usage.completion_tokens == 9

    # Both long prompts went prefill -> decode, and every prompt token's KV bytes were moved.
    assert _metric(base, "dynamo_frontend_disagg_requests_total") == 2
    moved = _metric(base, "dynamo_frontend_kv_transfer_bytes_total")
    assert moved == (chat.usage.prompt_tokens + usage.prompt_tokens) * KV_BYTES_PER_TOKEN
    assert _metric(base, "dynamo_frontend_kv_transfer_seconds_count") == 2

    # The frontend told the prefill worker to let go of the KV once the decode worker had it
    # (it would otherwise hold it for --kv-hold-timeout, 60 s).
    def blocks_in_use(role: str) -> int:
        return next(i["active_kv_blocks"] for i in http_get(f"{base}/health")[1]["instances"] if i["role"] == role)

    wait_until(lambda: blocks_in_use("prefill") == 0, 5)

    # A client that leaves mid-stream: the decode worker aborts, and neither keeps the blocks.
    stream = client.completions.create(model="m", prompt=_long_prompt("oceans"), max_tokens=3500, stream=True)
    for _ in itertools.islice(stream, 3):
        pass
    stream.close()
    wait_until(lambda: blocks_in_use("decode") == 0 and blocks_in_use("prefill") == 0, 5)
    assert _metric(base, "dynamo_frontend_disagg_requests_total") == 3

    short = client.completions.create(model="m", prompt="Hi", max_tokens=4)
    assert short.usage.completion_tokens == 4
    assert _metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="short_prompt") == 1
    assert _metric(base, "dynamo_frontend_disagg_requests_total") == 3


def test_without_prefill_workers_decode_serves_whole_requests_and_a_corrupted_transfer_fails_loudly(
    cluster, mistral_tokenizer_dir
):
    model = ["--model", str(mistral_tokenizer_dir), "--model-name", "m", "--speedup-ratio", "50"]
    decode = cluster.start("worker", "--mode", "decode", *model)
    frontend, base = cluster.frontend("--disagg-min-prompt-tokens", "16")
    cluster.wait_for_workers(base, 1, frontend)
    client = _client(base)
    reply = client.completions.create(model="m", prompt=_long_prompt("lakes"), max_tokens=5)
    assert reply.usage.completion_tokens == 5
    assert _metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="no_prefill_worker") == 1

    cluster.start("worker", "--mode", "prefill", "--inject-kv-corruption", *model)
    cluster.wait_for_workers(base, 2, frontend)
    with pytest.raises(openai.InternalServerError) as failure:
        client.completions.create(model="m", prompt=_long_prompt("forests"), max_tokens=5)
    assert "KV transfer corrupted" in str(failure.value)
    stream = client.completions.create(model="m", prompt=_long_prompt("deserts"), max_tokens=5, stream=True)
    with pytest.raises(openai.APIError, match="KV transfer corrupted"):
        list(stream)
    assert "KV transfer corrupted: block" in decode.output()
    assert _metric(base, "dynamo_frontend_kv_transfer_bytes_total") > 0


def test_a_prefill_worker_killed_mid_request_costs_the_request_nothing(cluster, mistral_tokenizer_dir):
    model = ["--model", str(mistral_tokenizer_dir), "--model-name", "m"]
    cluster.start("worker", "--mode", "decode", *model, "--speedup-ratio", "50")
    # A slow prefill worker: a 600-token prompt takes it about 3 s.
    cluster.start("worker", "--mode", "prefill", *model, "--prefill-tokens-per-s", "200")
    frontend, base = cluster.frontend("--disagg-min-prompt-tokens", "16")
    instances = cluster.wait_for_workers(base, 2, frontend)
    prefill_pid = next(i["pid"] for i in instances if i["role"] == "prefill")

    result: dict = {}

    def ask() -> None:
        try:
            result["reply"] = _client(base).completions.create(model="m", prompt=_long_prompt("clouds", 300), max_tokens=6)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    wait_until(lambda: any(i["in_flight"] for i in http_get(f"{base}/health")[1]["instances"] if i["role"] == "prefill"), 20)
    os.kill(prefill_pid, signal.SIGKILL)
    thread.join(60)
    assert "error" not in result, result.get("error")
    assert result["reply"].usage.completion_tokens == 6
    assert _metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="prefill_failed") == 1
    assert re.search(r"prefill of request \S+ failed", frontend.output())


# --- the rendezvous handoff (SGLang's): prefill and decode get the request at once ---------------


def test_rendezvous_handoff_sends_both_sides_at_once_and_moves_every_prompt_tokens_kv(cluster, mistral_tokenizer_dir):
    _, base = cluster.serve(
        "--disagg", "--prefill-workers", "1", "--decode-workers", "1", "--disagg-bootstrap",
        "--disagg-min-prompt-tokens", "32", "--model", str(mistral_tokenizer_dir), "--model-name", "m",
        "--speedup-ratio", "50", workers=2,
    )
    client = _client(base)
    chat = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": _long_prompt("rivers")}], max_tokens=12)
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 12
    pieces = list(client.completions.create(model="m", prompt=_long_prompt("mountains"), max_tokens=9,
                                            stream=True, stream_options={"include_usage": True}))
    usage = pieces[-1].usage
    assert usage.completion_tokens == 9
    assert [p.choices[0].finish_reason for p in pieces if p.choices and p.choices[0].finish_reason] == ["length"]

    assert _metric(base, "dynamo_frontend_disagg_requests_total") == 2
    assert _metric(base, "dynamo_frontend_kv_transfer_bytes_total") == (
        chat.usage.prompt_tokens + usage.prompt_tokens) * KV_BYTES_PER_TOKEN
    assert _metric(base, "dynamo_frontend_disagg_fallbacks_total") == 0
    assert _metric(base, "dynamo_frontend_disagg_prefill_errors_total") == 0

    def blocks_in_use(role: str) -> int:
        return next(i["active_kv_blocks"] for i in http_get(f"{base}/health")[1]["instances"] if i["role"] == role)

    wait_until(lambda: blocks_in_use("prefill") == 0, 5)  # released once the decode worker had it

    # A client that leaves mid-stream: both sides are cancelled and neither keeps the blocks.
    stream = client.completions.create(model="m", prompt=_long_prompt("oceans"), max_tokens=3500, stream=True)
    for _ in itertools.islice(stream, 3):
        pass
    stream.close()
    wait_until(lambda: blocks_in_use("decode") == 0 and blocks_in_use("prefill") == 0, 5)


def test_rendezvous_prefill_killed_mid_request_falls_back_with_the_same_greedy_output(cluster, mistral_tokenizer_dir):
    model = ["--model", str(mistral_tokenizer_dir), "--model-name", "m"]
    cluster.start("worker", "--mode", "decode", *model, "--speedup-ratio", "50")
    # A slow prefill worker: a 600-token prompt takes it about 3 s.
    cluster.start("worker", "--mode", "prefill", "--disagg-bootstrap", *model, "--prefill-tokens-per-s", "200")
    frontend, base = cluster.frontend("--disagg-min-prompt-tokens", "16")
    instances = cluster.wait_for_workers(base, 2, frontend)
    prefill_pid = next(i["pid"] for i in instances if i["role"] == "prefill")
    client = _client(base)

    def greedy() -> str:
        return client.completions.create(model="m", prompt=_long_prompt("hills", 20), max_tokens=8,
                                         temperature=0, seed=11).choices[0].text

    disaggregated = greedy()
    assert _metric(base, "dynamo_frontend_disagg_requests_total") == 1

    result: dict = {}

    def ask() -> None:
        try:
            result["reply"] = client.completions.create(model="m", prompt=_long_prompt("clouds", 300), max_tokens=6)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    # Both sides have the request at once: the decode worker waits in the room meanwhile.
    wait_until(lambda: all(i["in_flight"] for i in http_get(f"{base}/health")[1]["instances"]), 20)
    os.kill(prefill_pid, signal.SIGKILL)
    thread.join(60)
    assert "error" not in result, result.get("error")
    assert result["reply"].usage.completion_tokens == 6
    # The frontend sees the prefill stream or the decode worker's rendezvous fail first.
    assert (_metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="prefill_failed")
            + _metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="decode_kv_failed")) == 1

    cluster.wait_for_workers(base, 1, frontend)
    wait_until(lambda: len(http_get(f"{base}/health")[1]["instances"]) == 1, 20)
    assert greedy() == disaggregated  # now served whole by the decode worker
    assert _metric(base, "dynamo_frontend_disagg_fallbacks_total", reason="no_prefill_worker") == 1


def test_rendezvous_only_workers_retry_the_split_then_answer_a_503_that_names_the_way_out(cluster, mistral_tokenizer_dir):
    # Decode workers that, like SGLang's, take only split requests; a prefill worker whose KV
    # cache holds short prompts only (4 blocks of 16 tokens) and a 30 s room timeout.
    model = ["--model", str(mistral_tokenizer_dir), "--model-name", "m", "--speedup-ratio", "50"]
    cluster.start("worker", "--mode", "decode", "--disagg-bootstrap", *model)
    cluster.start("worker", "--mode", "prefill", "--disagg-bootstrap", "--num-gpu-blocks", "4", *model)
    frontend, base = cluster.frontend("--migration-limit", "2")
    instances = cluster.wait_for_workers(base, 2, frontend)
    client = _client(base)
    short = client.completions.create(model="m", prompt="Say hi.", max_tokens=4)
    assert short.usage.completion_tokens == 4
    assert _metric(base, "dynamo_frontend_disagg_requests_total") == 1

    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model="m", prompt=_long_prompt("rivers", 80), max_tokens=4)
    assert failed.value.status_code == 503
    error = failed.value.body
    assert error["type"] == "service_unavailable"
    assert "3 split(s) failed" in error["message"] and "start a prefill worker" in error["message"]
    assert _metric(base, "dynamo_frontend_reroutes_total", reason="prefill_failed") == 2
    # Each failed prefill failed its room at once: nothing waited for the 30 s bootstrap timeout.
    assert _metric(base, "dynamo_frontend_request_duration_seconds_sum") < 10

    os.kill(next(i["pid"] for i in instances if i["role"] == "prefill"), signal.SIGKILL)
    wait_until(lambda: len(http_get(f"{base}/health")[1]["instances"]) == 1, 20)
    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model="m", prompt="Say hi.", max_tokens=4)
    assert failed.value.status_code == 503
    assert "no prefill worker" in failed.value.body["message"] and "an aggregated one" in failed.value.body["message"]
