#!/usr/bin/env bash
# Download the wheels the GPU machine lacks for the gateway scaling benchmark
# (benchmarks/gateway_scaling.sh): dynamo-core's frontend and mocker, and NVIDIA Dynamo 1.6.1's
# frontend and mocker for the comparison; pack them into parts of at most 55 MB, one part per
# `run` call. Run from the repository root on a machine with PyPI access:
#
#   scripts/gpu/fetch_gateway_wheels.sh     # -> .whl-gateway/all, .whl-gateway/parts/01..NN (+ SHA256SUMS)
#
# then on the GPU machine, one part per call (each within 30 s of the last):
#   WHL=.whl-gateway SITE=/root/site-gateway scripts/gpu/stage_wheels.sh [--install]
#
# The set is (1) what `uv pip compile core/pyproject.toml --python-version 3.12` resolves for
# dynamo-core, less what the GPU image already holds (KINDS.md's list: anyio, click, grpcio,
# h11, httpx, huggingface-hub, jinja2, multidict, pluggy, prometheus-client, protobuf, pyyaml,
# rich, tokenizers, uvloop, ...), and (2) ai-dynamo 1.6.1 with ai-dynamo-runtime 1.6.1 and
# their needs as installed in /work/venvs/dynamo161, less the image's: without `aisimulate`
# (a stub that needs pypi.nvidia.com; `python -m dynamo.mocker` runs without it). Both sets
# share one target: ai-dynamo imports as `dynamo`, ours as `dynamo_core`, and their common
# wheel (msgspec) is one version.
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
source scripts/gpu/wheel_fetch.sh
WHL=.whl-gateway
PART_BYTES=$((55 * 1000 * 1000))   # one part per call, leaving room for the working tree (64 MiB in all)

WHEELS=(
  # dynamo-core's frontend, mocker and CLI (uv pip compile, 2026-12-03)
  litestar==2.25.0 litestar-htmx==0.5.0 multipart==2.0.1 polyfactory==3.5.0 faker==40.63.0
  rich-click==1.9.9 uvicorn==0.55.0 httptools==0.9.0 msgspec==0.23.0 nats-py==2.16.0 aetcd==1.0.0
  sniffio==1.3.1 truststore==0.10.5 httpx2==2.16.2 httpcore2==2.16.2
  # NVIDIA Dynamo 1.6.1: its Rust frontend and runtime, python -m dynamo.frontend / dynamo.mocker
  ai-dynamo==1.6.1 ai-dynamo-runtime==1.6.1
  pydantic==2.13.5 pydantic-core==2.46.5 annotated-types==0.8.0 typing-inspection==0.4.5
  pyzmq==27.3.0 redis==8.1.0 zstandard==0.25.0 tzdata==2026.6
  kubernetes==32.0.1 durationpy==0.11 google-auth==2.63.0 oauthlib==4.0.1 requests-oauthlib==2.0.0
  websocket-client==1.9.2 pyasn1==0.6.5 pyasn1-modules==0.4.2 cryptography==50.0.2 cffi==2.1.1
  pycparser==3.12
)


rm -rf "$WHL/all"
download_wheels "$WHL/all" "${WHEELS[@]}"

pack_wheels "$WHL" "$PART_BYTES"
