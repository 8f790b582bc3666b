"""`dynamo serve` processes that the OpenAI-surface tests share (one per test module that
imports them), and the two ways those tests speak to them: raw HTTP and the `openai` client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import DynamoCluster


@pytest.fixture(scope="module")
def served(tmp_path_factory, mistral_tokenizer_dir):
    cluster = DynamoCluster(Path(tmp_path_factory.mktemp("surface")))
    try:
        _, base = cluster.serve(
            "--model", str(mistral_tokenizer_dir), "--model-name", "test-model", "--speedup-ratio", "100",
            "--preprocess-workers", "1", "--preprocess-min-chars", "256", workers=1,
        )
        yield base
    finally:
        cluster.stop()


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def post(base: str, path: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())



@pytest.fixture(scope="module")
def echo_served(tmp_path_factory):
    cluster = DynamoCluster(Path(tmp_path_factory.mktemp("surface-echo")))
    try:
        yield cluster.serve("--engine", "echo", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
                            workers=1)[1]
    finally:
        cluster.stop()
