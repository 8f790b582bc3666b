"""What the GPU tests share: engine flags for workers that share one GPU (vLLM's and SGLang's),
the random model, HTTP calls, and `dynamo` child processes whose output is kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from random_llama import build_random_llama

KV_CACHE_BYTES = 1 << 30  # per worker; fixed, so workers starting together size alike
ENGINE_FLAGS = [
    "--gpu-memory-utilization", "0.3",
    "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
    "--max-model-len", "4096",
    "--enforce-eager",  # starts faster; the benchmark script measures with CUDA graphs
    "--enable-log-requests",  # vLLM logs "Aborted request(s) ..." for the cancellation check
]
# SGLang on the image's wheel set (shared/gpu/sglang-0.5.15.md): triton attention and pytorch
# sampling (flashinfer's JIT kernels are not carried), no grammar backend unless xgrammar is;
# a small static memory fraction so several engines share the GPU, and a fixed KV pool: SGLang
# sizes its pool from the memory free when it starts, so engines starting together would race.
SGLANG_ENGINE_FLAGS = [
    "--mem-fraction-static", "0.15",
    "--max-total-tokens", "65536",
    "--context-length", "4096",
    "--attention-backend", "triton",
    "--sampling-backend", "pytorch",
    "--disable-cuda-graph",  # starts faster; the benchmark script measures with CUDA graphs
]
START_TIMEOUT_S = 600
DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


def call(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read().decode()
    return json.loads(raw) if raw.startswith(("{", "[")) else raw


def model_dir(tmp_path_factory) -> Path:
    """DYN_TEST_MODEL_DIR when it holds a model, else a random Llama made now."""
    preset = os.environ.get("DYN_TEST_MODEL_DIR")
    if preset and (Path(preset) / "model.safetensors").is_file():
        return Path(preset)
    return build_random_llama(tmp_path_factory.mktemp("models") / "llama-8l-random")


class Child:
    """A `dynamo` command run as a child process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        print("\n$ dynamo " + " ".join(args), flush=True)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(DYNAMO + args, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for_instances(base: str, count: int, children: list[Child]) -> float:
    """Wait until `count` workers are in the frontend's /health; seconds taken."""
    started = time.monotonic()
    while True:
        for child in children:
            assert child.proc.poll() is None, f"{child.log.name} exited:\n{child.output()[-4000:]}"
        assert time.monotonic() - started < START_TIMEOUT_S, "not up in time:\n" + "\n".join(
            c.output()[-2000:] for c in children)
        try:
            if len(call(f"{base}/health")["instances"]) >= count:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(1)
