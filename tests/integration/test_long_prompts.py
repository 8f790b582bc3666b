"""Long prompts templated and tokenized in the frontend's prompt pool (`--preprocess-workers`),
checked against the same requests on a frontend without one, through real `dynamo serve`s."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DynamoCluster, DynamoProcess, wait_until
from dynamo_core.frontend.preprocessor import OFF_LOOP_PROMPT_CHARS

pytestmark = pytest.mark.timeout(180)

POOL_WORKERS = 2
POOL_MIN_CHARS = 1000  # below the 8,192 characters a frontend without a pool moves to a thread
WORDS = "apple bread chair dance eagle field grape horse image judge knife lemon mouse north ocean piano".split()


def _long_text(seed: int, chars: int = 60_000) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def _post(base: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- processes, from /proc -------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ... (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int, marker: str) -> list[int]:
    """Live child processes of `pid` whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and marker in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _frontend_pid(serve: DynamoProcess) -> int:
    return wait_until(lambda: (_children(serve.pid, " frontend ") or [None])[0], 30, serve)


def _pool_pids(frontend: int, expected: int) -> list[int]:
    # The pool warms in the background after startup; its processes are spawned interpreters.
    return wait_until(lambda: (pids := _children(frontend, "spawn_main")) and len(pids) == expected and pids, 30)


def _cpu_ticks(pids: list[int]) -> int:
    return sum(int(f[11]) + int(f[12]) for f in map(_stat_fields, pids))


def _gone(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] == "Z"
    except OSError:
        return True


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frontends(tmp_path_factory: pytest.TempPathFactory, mistral_tokenizer_dir: Path) -> Iterator[dict]:
    """Two `dynamo serve`s of one echo worker each, alike but for the prompt pool: the echo
    engine streams back the last message's tokens, so outputs show the prompt's token ids."""
    cluster = DynamoCluster(tmp_path_factory.mktemp("long-prompts"))
    common = ("--engine", "echo", "--model", str(mistral_tokenizer_dir), "--model-name", "m", "--context-length", "65536")
    try:
        pooled, pooled_base = cluster.serve(*common, "--preprocess-workers", str(POOL_WORKERS),
                                            "--preprocess-min-chars", str(POOL_MIN_CHARS), workers=1)
        plain, plain_base = cluster.serve(*common, "--preprocess-workers", "0", workers=1)
        yield {"pooled": pooled_base, "plain": plain_base, "pooled_serve": pooled, "plain_serve": plain}
    finally:
        cluster.stop()


# --- tests -----------------------------------------------------------------------------------


def test_long_prompts_through_the_pool_match_the_loop_path(frontends):
    pooled, plain = frontends["pooled"], frontends["plain"]
    pool_pids = _pool_pids(_frontend_pid(frontends["pooled_serve"]), POOL_WORKERS)
    assert _children(_frontend_pid(frontends["plain_serve"]), "spawn_main") == []
    # Warm (imports done), so the CPU the processes use from here on is the prompts'.
    wait_until(lambda: "prompt pool ready" in frontends["pooled_serve"].output(), 30)
    ticks_before = _cpu_ticks(pool_pids)

    text = _long_text(1)
    assert len(text) > OFF_LOOP_PROMPT_CHARS
    bodies = {
        "/v1/chat/completions": {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": _long_text(2, 20_000)},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": text},
            ],
        },
        "/v1/completions": {"model": "m", "prompt": text, "max_tokens": 20_000},
    }
    usage = {}
    for path, body in bodies.items():
        status, with_pool = _post(pooled, path, body)
        assert status == 200, with_pool
        status, without = _post(plain, path, body)
        assert status == 200, without
        assert with_pool["usage"] == without["usage"], path
        assert with_pool["usage"]["prompt_tokens"] > 10_000
        usage[path] = with_pool["usage"]
        choice, reference = with_pool["choices"][0], without["choices"][0]
        assert choice.get("message", choice.get("text")) == reference.get("message", reference.get("text")), path
        # The echo engine replays the final message (chat) or the prompt (completions) token by token.
        output = choice["message"]["content"] if "message" in choice else choice["text"]
        assert output == text

    # The same prompt rendered by the `/tokenize` endpoint, which always runs on the loop.
    status, tokens = _post(pooled, "/tokenize", {"model": "m", "messages": bodies["/v1/chat/completions"]["messages"]})
    assert status == 200
    assert tokens["count"] == usage["/v1/chat/completions"]["prompt_tokens"]
    # The pool did the work: its processes used CPU (60k characters take ~0.1 s to encode).
    assert _cpu_ticks(pool_pids) > ticks_before


def test_prompts_over_the_pools_threshold_go_to_it(frontends):
    pool_pids = _pool_pids(_frontend_pid(frontends["pooled_serve"]), POOL_WORKERS)
    wait_until(lambda: "prompt pool ready" in frontends["pooled_serve"].output(), 30)
    ticks_before = _cpu_ticks(pool_pids)
    for seed in range(20):
        text = _long_text(100 + seed, 5_000)
        assert POOL_MIN_CHARS < len(text) < 8_192
        body = {"model": "m", "prompt": text, "max_tokens": 5_000}
        status, with_pool = _post(frontends["pooled"], "/v1/completions", body)
        assert status == 200 and (status, with_pool["usage"]) == (200, _post(frontends["plain"], "/v1/completions", body)[1]["usage"])
        assert with_pool["choices"][0]["text"] == text
    assert _cpu_ticks(pool_pids) > ticks_before  # encoded in the pool, not on the loop


def test_a_batch_of_text_prompts_counts_its_texts_for_the_threshold(frontends):
    """A list of prompts is measured by its texts (it used to count as nothing, and so was
    always encoded on the loop, however long)."""
    pool_pids = _pool_pids(_frontend_pid(frontends["pooled_serve"]), POOL_WORKERS)
    wait_until(lambda: "prompt pool ready" in frontends["pooled_serve"].output(), 30)
    ticks_before = _cpu_ticks(pool_pids)
    for seed in range(20):
        texts = [_long_text(200 + seed, 3_000), _long_text(300 + seed, 3_000)]
        body = {"model": "m", "prompt": texts, "max_tokens": 3}
        status, with_pool = _post(frontends["pooled"], "/v1/completions", body)
        assert status == 200 and with_pool["usage"] == _post(frontends["plain"], "/v1/completions", body)[1]["usage"]
    assert _cpu_ticks(pool_pids) > ticks_before


def test_a_template_error_inside_the_pool_is_the_same_400(frontends):
    # The test tokenizer's Mistral template refuses two user turns in a row (raise_exception).
    body = {"model": "m", "messages": [{"role": "user", "content": _long_text(3)}, {"role": "user", "content": "again"}]}
    status, with_pool = _post(frontends["pooled"], "/v1/chat/completions", body)
    assert status == 400
    assert with_pool["error"]["message"] == "Conversation roles must alternate user/assistant/user/assistant/..."
    assert with_pool["error"]["param"] == "messages"
    assert (status, with_pool) == _post(frontends["plain"], "/v1/chat/completions", body)

    # A refused template variable fails before rendering, inside the pool all the same.
    body = {"model": "m", "messages": [{"role": "user", "content": _long_text(4)}], "chat_template_kwargs": {"tools": []}}
    status, with_pool = _post(frontends["pooled"], "/v1/chat/completions", body)
    assert status == 400 and "chat_template_kwargs may not set tools" in with_pool["error"]["message"]
    assert (status, with_pool) == _post(frontends["plain"], "/v1/chat/completions", body)

    # Still serving, through the pool.
    status, reply = _post(frontends["pooled"], "/v1/completions", {"model": "m", "prompt": _long_text(5), "max_tokens": 3})
    assert status == 200 and reply["usage"]["completion_tokens"] == 3


def test_pool_processes_are_children_of_the_frontend_and_exit_with_serve(cluster):
    serve, _ = cluster.serve("--engine", "echo", "--preprocess-workers", "3", workers=1)
    frontend = _frontend_pid(serve)
    pool = _pool_pids(frontend, 3)
    assert serve.stop() == 0
    for pid in [frontend, *pool]:
        wait_until(lambda: _gone(pid), 15)
