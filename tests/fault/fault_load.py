"""Requests for the fault tests: each returns its text and usage, so that a run with faults can
be compared with an unbroken run of the same request (the mocker is deterministic per seed)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import urllib.request
from dataclasses import dataclass, field

import openai

KINDS = ("chat-stream", "completions-stream", "chat", "completions")


def client_for(base: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, timeout=60,
                         **kwargs)


def one_request(client: openai.OpenAI, kind: str, seed: int, max_tokens: int,
                started: threading.Semaphore | None = None, started_after: int = 1) -> tuple[str, int, int]:
    """One request of `kind` (chat/completions, streamed or whole): (text, completion, prompt tokens).
    `started` is released at its `started_after`-th streamed text (at once for a whole response)."""
    chat, stream = kind.startswith("chat"), kind.endswith("stream")
    args = dict(model="test-model", max_tokens=max_tokens, seed=seed, temperature=0)
    if chat:
        args["messages"] = [{"role": "user", "content": f"tell me a story number {seed}"}]
    else:
        args["prompt"] = f"once upon a time, story {seed}"
    create = client.chat.completions.create if chat else client.completions.create
    if not stream:
        if started is not None:
            started.release()
        reply = create(**args)
        text = reply.choices[0].message.content if chat else reply.choices[0].text
        return text, reply.usage.completion_tokens, reply.usage.prompt_tokens
    parts, usage = [], None
    for chunk in create(**args, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        piece = chunk.choices[0].delta.content if chat else chunk.choices[0].text
        if piece:
            parts.append(piece)
            if len(parts) == started_after and started is not None:
                started.release()
    if usage is None:
        raise RuntimeError("the stream ended without usage (an error event?)")
    return "".join(parts), usage.completion_tokens, usage.prompt_tokens


@dataclass
class Outcomes:
    """Requests sent / completed whole / failed with an error / lost (ended short or garbled)."""

    completed: list[tuple[str, int, tuple]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.completed) + len(self.failed) + len(self.lost)


class LoadLoop:
    """`concurrency` threads sending requests back to back until `stop()`, seeds from a small set."""

    def __init__(self, client: openai.OpenAI, concurrency: int, max_tokens: int, seeds: int = 4):
        self.client, self.max_tokens, self.seeds = client, max_tokens, seeds
        self.outcomes = Outcomes()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(concurrency)]

    def start(self) -> LoadLoop:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 60) -> Outcomes:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        return self.outcomes

    def _loop(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            kind, seed = KINDS[n % len(KINDS)], n % self.seeds
            n += 1
            try:
                result = one_request(self.client, kind, seed, self.max_tokens)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with self._lock:
                    self.outcomes.failed.append(f"{kind} seed {seed}: {type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if result[1] == self.max_tokens:
                    self.outcomes.completed.append((kind, seed, result))
                else:
                    self.outcomes.lost.append(f"{kind} seed {seed}: {result[1]} of {self.max_tokens} tokens")


def references(client: openai.OpenAI, requests: list[tuple[str, int]], max_tokens: int) -> dict[tuple[str, int], tuple]:
    """Each distinct (kind, seed) served unbroken, concurrently."""
    distinct = sorted(set(requests))
    with concurrent.futures.ThreadPoolExecutor(len(distinct)) as pool:
        results = pool.map(lambda r: one_request(client, r[0], r[1], max_tokens), distinct)
        return dict(zip(distinct, results))


def check_against_reference(client: openai.OpenAI, outcomes: Outcomes, max_tokens: int) -> list[str]:
    """Completed requests whose text or usage differs from an unbroken run of the same request."""
    expected = references(client, [(kind, seed) for kind, seed, _ in outcomes.completed], max_tokens)
    return [f"{kind} seed {seed}: {result!r} != {expected[(kind, seed)]!r}"
            for kind, seed, result in outcomes.completed if result != expected[(kind, seed)]]


def signal_busiest_worker_mid_stream(
    client: openai.OpenAI, base: str, requests: list[tuple[str, int]], max_tokens: int, sig: int, *,
    started_after: int = 1, min_in_flight: int = 1, role: str | None = None, victims: list[dict] | None = None,
) -> list[tuple[str, int, int]]:
    """Send `requests` at once; once each streams (`started_after` texts in), send `sig` to the
    worker (of `role`) with most of them in flight (appended to `victims` first); their results."""
    started = threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(one_request, client, kind, seed, max_tokens, started, started_after)
                   for kind, seed in requests]
        for _ in requests:
            assert started.acquire(timeout=30), "a request did not start streaming"
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            instances = json.loads(response.read())["instances"]
        victim = max((i for i in instances if role is None or i["role"] == role), key=lambda i: i["in_flight"])
        assert victim["in_flight"] >= min_in_flight, instances
        if victims is not None:
            victims.append(victim)
        os.kill(victim["pid"], sig)
        return [f.result(timeout=90) for f in futures]
