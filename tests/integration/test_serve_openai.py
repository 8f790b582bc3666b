"""`dynamo serve` with real worker processes, spoken to by the official `openai` client."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import threading
import time
import urllib.request

import openai
import pytest

from conftest import http_get, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def mocker_serve(cluster, mistral_tokenizer_dir):
    """2 mocker workers behind one frontend, with the test's sentencepiece tokenizer."""
    process, base = cluster.serve(
        "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "100",
        workers=2,
    )
    return process, base


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_chat_and_completions_streaming_and_not(mocker_serve):
    _, base = mocker_serve
    client = _client(base)

    models = client.models.list()
    assert [m.id for m in models.data] == ["test-model"]

    chat = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hello there"}], max_tokens=12
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].finish_reason == "length"
    # openai's client fills absent keys itself: check the wire has OpenAI's keys
    raw = client.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2).http_response.json()
    assert raw["choices"][0]["message"]["role"] == "assistant" and "content" in raw["choices"][0]["message"]
    assert chat.choices[0].message.content
    assert chat.usage.completion_tokens == 12
    assert chat.usage.prompt_tokens > 5

    stream = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Stream please"}], max_tokens=10, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 10

    completion = client.completions.create(model="test-model", prompt="Once upon a time", max_tokens=7)
    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens == 7
    assert completion.choices[0].text

    streamed = client.completions.create(model="test-model", prompt=[1, 2, 3, 4], max_tokens=5, stream=True)
    pieces = list(streamed)
    assert "".join(p.choices[0].text for p in pieces)
    assert pieces[-1].choices[0].finish_reason == "length"


def test_requests_spread_over_both_workers(mocker_serve):
    _, base = mocker_serve
    client = _client(base)
    for _ in range(4):
        client.completions.create(model="test-model", prompt="spread", max_tokens=2)
    _, metrics = http_get(f"{base}/metrics")
    assert 'dynamo_frontend_requests_total{endpoint="completions",model="test-model",status="ok"} 4.0' in metrics
    status, health = http_get(f"{base}/health")
    assert status == 200 and len(health["instances"]) == 2
    # Each child shows its role in `ps`: its command line reads `.../dynamo worker --engine mocker ...`.
    for instance in health["instances"]:
        cmdline = open(f"/proc/{instance['pid']}/cmdline", "rb").read().split(b"\0")
        words = [os.path.basename(w.decode()) for w in cmdline if w]
        assert words[1:4] == ["dynamo", "worker", "--engine"] and words[4] == "mocker", words


def _gc_collections(base: str) -> list[float]:
    _, metrics = http_get(f"{base}/metrics")
    found = {int(g): float(n) for g, n in re.findall(r'python_gc_collections_total\{generation="(\d)"\} (\S+)', metrics)}
    return [found[g] for g in range(3)]


def test_the_frontend_rarely_stops_its_streams_to_collect_garbage(mocker_serve):
    """Young-generation collections are rare once the frontend is up: at CPython's default
    threshold these 96 streams cost it about 7 collections, each stalling every stream on its
    loop."""
    _, base = mocker_serve
    client = _client(base)
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "warm"}], max_tokens=2)
    before = _gc_collections(base)

    def stream(i: int) -> int:
        chunks = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": f"request {i} " + "tell me more " * 40}],
            max_tokens=64, stream=True, extra_body={"ignore_eos": True})
        return sum(1 for c in chunks if c.choices and c.choices[0].delta.content)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        streamed = list(pool.map(stream, range(96)))
    after = _gc_collections(base)
    collections = [b - a for a, b in zip(before, after)]
    print(f"frontend GC collections per generation during 96 streams: {collections}")
    assert min(streamed) > 0
    assert collections[0] <= 2 and collections[2] == 0, collections


def test_stop_strings_and_n_choices(mocker_serve):
    _, base = mocker_serve
    client = _client(base)
    full = client.completions.create(model="test-model", prompt="abc", max_tokens=30, seed=7).choices[0].text
    words = full.split()
    assert len(words) >= 3
    stop = " " + words[2]
    cut = client.completions.create(model="test-model", prompt="abc", max_tokens=30, seed=7, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[: full.index(stop)]

    many = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=3
    )
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    assert many.usage.completion_tokens == 12


def test_killed_worker_leaves_routing_and_without_migration_its_stream_ends_with_error(cluster, mistral_tokenizer_dir):
    # Slow workers, so a request is surely in flight when its worker dies. With migration on
    # (the default) the stream would continue elsewhere: tests/fault/test_migration.py.
    serve, base = cluster.serve(
        "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "1",
        "--migration-limit", "0", workers=2,
    )
    client = _client(base)
    instances = http_get(f"{base}/health")[1]["instances"]

    outcomes: list[str] = []
    streaming = threading.Semaphore(0)

    def long_stream():
        try:
            stream = client.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "long"}], max_tokens=400, stream=True
            )
            first = True
            for chunk in stream:
                if first and chunk.choices and chunk.choices[0].delta.content:
                    first = False
                    streaming.release()
            outcomes.append("completed")
        except openai.APIError as exc:
            outcomes.append(f"error: {exc}")

    threads = [threading.Thread(target=long_stream) for _ in range(2)]
    for t in threads:
        t.start()
    # Round-robin gives each worker one stream; wait until both are producing tokens (a worker
    # killed before its first token costs nothing: the request is routed again).
    assert streaming.acquire(timeout=20) and streaming.acquire(timeout=20)
    assert all(i["in_flight"] for i in http_get(f"{base}/health")[1]["instances"])
    victim = instances[0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    wait_until(lambda: len(http_get(f"{base}/health")[1]["instances"]) == 1, 10, serve)
    assert time.monotonic() - killed_at < 5.0, "the dead worker should leave discovery within seconds"
    remaining = http_get(f"{base}/health")[1]["instances"]
    assert victim["instance_id"] not in {i["instance_id"] for i in remaining}

    # Later requests succeed on the survivor.
    for _ in range(3):
        reply = client.completions.create(model="test-model", prompt="after", max_tokens=2)
        assert reply.choices[0].finish_reason == "length"

    # The stream on the killed worker ended with an error instead of hanging; the other finished.
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(o.split(":")[0] for o in outcomes) == ["completed", "error"], outcomes


def test_multibyte_text_streams_back_byte_identical_through_echo(cluster, mistral_tokenizer_dir):
    _, base = cluster.serve("--engine", "echo", "--model", str(mistral_tokenizer_dir), workers=1)
    model = mistral_tokenizer_dir.name
    client = _client(base)
    text = "Grüße, 世界! 😀👍🏽 Ünïcödé — ça va? 日本語のテキスト 🚀 end"
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], stream=True, max_tokens=500
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == "stop"


def test_builtin_tokenizer_echo_roundtrips_without_a_model_dir(cluster):
    _, base = cluster.serve("--engine", "echo", workers=1)
    client = _client(base)
    text = "naïve café ☕ 你好 🙂"
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content == text


BAD_REQUESTS = [
    ("chat", b"{not json", 400, None),
    ("chat", b'{"model": "test-model"}', 400, "messages"),
    ("chat", b'{"model": "test-model", "messages": []}', 400, "messages"),
    ("chat", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ("chat", b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400, "max_tokens"),
    ("chat", b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}', 400, "max_tokens"),
    ("chat", b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}', 400, "max_tokens"),
    ("chat", b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400, "temperature"),
    ("completions", b'{"model": "test-model", "prompt": "x", "max_tokens": 999999}', 400, "max_tokens"),
    ("completions", b'{"model": "test-model", "prompt": [99999999]}', 400, "prompt"),
    ("completions", b'{"model": "test-model"}', 400, "prompt"),
]


def test_bad_input_gets_openai_shaped_errors_and_server_keeps_serving(mocker_serve):
    import urllib.request

    _, base = mocker_serve
    for endpoint, body, status, param in BAD_REQUESTS:
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        request = urllib.request.Request(f"{base}{path}", data=body, headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"{body!r} was accepted")
        except urllib.error.HTTPError as exc:
            payload = __import__("json").loads(exc.read())
            assert exc.code == status, (body, exc.code, payload)
            error = payload["error"]
            assert set(error) == {"message", "type", "param", "code"}, payload
            assert error["message"]
            if param is not None:
                assert error["param"] == param, (body, error)

    long_prompt = "word " * 5000  # past the model's 4096-token context
    with pytest.raises(openai.BadRequestError) as info:
        _client(base).chat.completions.create(model="test-model", messages=[{"role": "user", "content": long_prompt}])
    assert "maximum context length" in str(info.value)
    # Still serving.
    assert _client(base).completions.create(model="test-model", prompt="ok", max_tokens=1).choices[0].text is not None


def test_frontend_without_workers_answers_503_then_serves_once_one_registers(cluster):
    _, base = cluster.frontend()
    status, body = http_get(f"{base}/health")
    assert status == 503 and body["instances"] == []
    with pytest.raises(openai.APIStatusError) as info:
        _client(base).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    assert "no worker" in info.value.message.lower()
    cluster.start("worker", "--engine", "echo")
    cluster.wait_for_workers(base, 1)
    reply = _client(base).chat.completions.create(model="echo", messages=[{"role": "user", "content": "back"}])
    assert reply.choices[0].message.content == "back"


def test_sigterm_stops_serve_and_every_child(cluster):
    serve, base = cluster.serve("--engine", "echo", workers=2)
    pids = [i["pid"] for i in http_get(f"{base}/health")[1]["instances"]]
    assert serve.stop() == 0
    for pid in pids:
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", 10)
    with pytest.raises(OSError):
        http_get(f"{base}/live", timeout=2)


def test_mem_discovery_runs_frontend_and_workers_in_one_process(cluster):
    serve, base = cluster.serve("--engine", "echo", "--discovery", "mem", workers=2)
    instances = http_get(f"{base}/health")[1]["instances"]
    assert {i["pid"] for i in instances} == {serve.pid}
    reply = _client(base).chat.completions.create(model="echo", messages=[{"role": "user", "content": "one process"}])
    assert reply.choices[0].message.content == "one process"


def test_tokenize_detokenize_and_single_model_endpoints(cluster, mistral_tokenizer_dir):
    import json
    import urllib.request

    _, base = cluster.serve("--engine", "echo", "--model", str(mistral_tokenizer_dir), "--model-name", "m", workers=1)

    def post(path, body):
        request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, body = post("/tokenize", {"model": "m", "prompt": "Hello world"})
    assert status == 200 and body["tokens"][0] == 1 and body["count"] == len(body["tokens"]) and body["max_model_len"] == 4096
    status, chat = post("/tokenize", {"model": "m", "messages": [{"role": "user", "content": "Hello world"}]})
    reply = _client(base).chat.completions.create(model="m", messages=[{"role": "user", "content": "Hello world"}], max_tokens=1)
    assert chat["count"] == reply.usage.prompt_tokens  # the chat endpoint's own template path
    status, text = post("/detokenize", {"model": "m", "tokens": body["tokens"]})
    assert status == 200 and text["prompt"] == "<s> Hello world"
    status, error = post("/detokenize", {"model": "m", "tokens": [10**9]})
    assert status == 400 and error["error"]["param"] == "tokens"
    status, error = post("/tokenize", {"model": "m"})
    assert status == 400
    assert http_get(f"{base}/v1/models/m") == (200, {"id": "m", "created": http_get(f"{base}/v1/models")[1]["data"][0]["created"],
                                                      "owned_by": "dynamo", "object": "model", "max_model_len": 4096})
    assert http_get(f"{base}/v1/models/nope")[0] == 404


def test_logprobs_come_back_in_openai_shapes_streaming_and_not(cluster, mistral_tokenizer_dir):
    _, base = cluster.serve("--engine", "echo", "--model", str(mistral_tokenizer_dir), workers=1)
    model = mistral_tokenizer_dir.name
    client = _client(base)
    text = "Hello world, 世界"
    messages = [{"role": "user", "content": text}]

    reply = client.chat.completions.create(model=model, messages=messages, logprobs=True, top_logprobs=1)
    content = reply.choices[0].logprobs.content
    # Echo is certain of every token; the pieces' bytes rebuild the text exactly.
    assert all(entry.logprob == 0.0 and [t.token for t in entry.top_logprobs] == [entry.token] for entry in content)
    assert bytes(b for entry in content for b in entry.bytes).decode().strip() == text
    assert client.chat.completions.create(model=model, messages=messages).choices[0].logprobs is None

    stream = client.chat.completions.create(model=model, messages=messages, logprobs=True, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in content]
    assert all(e.top_logprobs == [] for e in streamed)  # top_logprobs not asked for

    # (`echo` with `logprobs` would ask for prompt logprobs, which the echo engine refuses:
    # test_openai_surface.py; here its output, which is the prompt, is what is scored.)
    completion = client.completions.create(model=model, prompt="one two three", logprobs=2, max_tokens=16)
    choice = completion.choices[0]
    logprobs = choice.logprobs
    assert choice.text == "one two three"
    # Echo streams the prompt back, BOS first: a special token, shown but absent from the text.
    assert logprobs.tokens == ["<s>", " one", " two", " three"]
    assert logprobs.token_logprobs == [0.0] * 4
    assert logprobs.top_logprobs == [{token: 0.0} for token in logprobs.tokens]
    # Offsets follow the returned text, where the first word of the output has lost its
    # leading space.
    offsets = logprobs.text_offset
    assert offsets[:2] == [0, 0]
    assert offsets == sorted(offsets) and offsets[-1] < len(choice.text)
    assert choice.text[offsets[-1]:].strip() == "three"


def test_mocker_logprobs_have_the_asked_number_of_alternatives(mocker_serve):
    _, base = mocker_serve
    client = _client(base)
    reply = client.completions.create(model="test-model", prompt="a b c", max_tokens=5, logprobs=3,
                                      extra_body={"ignore_eos": True})
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert all(lp < 0 for lp in logprobs.token_logprobs)
    # Completions key alternatives by their text, so two tokens that print alike (byte tokens
    # show U+FFFD) share an entry; chat lists them.
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
    chat = client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "a"}],
                                          max_tokens=5, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(entry.top_logprobs) == 3 for entry in content)


def test_reasoning_parser_from_the_model_card_splits_thinking_streaming_and_not(cluster, mistral_tokenizer_dir):
    _, base = cluster.serve("--engine", "echo", "--model", str(mistral_tokenizer_dir), "--reasoning-parser", "qwen3",
                            workers=1)
    model = mistral_tokenizer_dir.name
    client = _client(base)
    said = "<think>The user wants a number.</think>\n\nIt is 42."  # echo streams it back as the output
    messages = [{"role": "user", "content": said}]

    message = client.chat.completions.create(model=model, messages=messages).choices[0].message
    assert message.content == "It is 42."
    assert message.model_extra["reasoning_content"] == "The user wants a number."

    chunks = [c.choices[0].delta for c in client.chat.completions.create(model=model, messages=messages, stream=True)
              if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in chunks)
    assert reasoning == "The user wants a number."
    assert "".join(d.content or "" for d in chunks) == "It is 42."

    plain = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "No thinking here."}])
    assert plain.choices[0].message.content == "No thinking here."
    assert plain.choices[0].message.model_extra.get("reasoning_content") is None



def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_chat_template_flag_replaces_the_models_template(cluster, mistral_tokenizer_dir, tmp_path):
    template = tmp_path / "shout.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    _, base = cluster.serve("--engine", "echo", "--model", str(mistral_tokenizer_dir),
                            "--chat-template", str(template), workers=1)
    model = mistral_tokenizer_dir.name
    tokens = _post_json(f"{base}/tokenize", {"model": model, "messages": [{"role": "user", "content": "quiet words"}]})
    assert _post_json(f"{base}/detokenize", {"model": model, "tokens": tokens["tokens"]})["prompt"].strip() == "QUIET WORDS"


def _http_chunks(base: str, path: str, body: dict) -> list[bytes]:
    """POST `body` and return the response body's HTTP/1.1 chunks as the server wrote them."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(base)
    payload = json.dumps(body).encode()
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (path.encode(), len(payload), payload))
        raw = b""
        while data := sock.recv(65536):
            raw += data
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(rest[:size])
        rest = rest[size + 2:]


def test_sse_events_ready_together_leave_in_one_write(mocker_serve):
    """The role chunk goes out with the first token's chunk, and the last token's chunk with
    the usage chunk and [DONE]: a one-token stream is one write, and every event still parses."""
    _, base = mocker_serve
    body = {"model": "test-model", "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    (only,) = _http_chunks(base, "/v1/chat/completions", {**body, "max_tokens": 1})
    events = [e for e in only.split(b"\n\n") if e]
    assert len(events) == 4 and events[-1] == b"data: [DONE]"
    role, token, usage = (json.loads(e.removeprefix(b"data: ")) for e in events[:3])
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert token["choices"][0]["finish_reason"] == "length" and usage["usage"]["completion_tokens"] == 1

    chunks = _http_chunks(base, "/v1/chat/completions", {**body, "max_tokens": 24})
    # The role chunk never leaves alone (under load the whole stream may be one write).
    assert chunks[0].count(b"\n\n") >= 2 and b'"role":"assistant"' in chunks[0]
    assert chunks[-1].endswith(b"data: [DONE]\n\n") and b'"usage"' in chunks[-1]
    streamed = [json.loads(e.removeprefix(b"data: ")) for e in b"".join(chunks).split(b"\n\n")
                if e and e != b"data: [DONE]"]
    assert sum(c["usage"]["completion_tokens"] for c in streamed if c.get("usage")) == 24
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == streamed[0]["id"] for c in streamed)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
    assert text
