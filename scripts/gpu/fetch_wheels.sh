#!/usr/bin/env bash
# Download the wheels the GPU machine lacks for vLLM 0.26.0 plus dynamo-core's own needs, and
# pack them into parts that each fit one `run` call (the working tree and everything carried
# must stay under 64 MiB a call). Run from the repository root on a machine with PyPI access:
#
#   scripts/gpu/fetch_wheels.sh            # -> .whl/parts/01 .. NN, .whl/SHA256SUMS
#   scripts/gpu/fetch_wheels.sh nixl       # -> .whl-nixl/parts/01 (+ SHA256SUMS): NIXL alone,
#       for tests/gpu/test_nixl_vram.py and benchmarks/transfer_bench_gpu.py in one call
#       (list .whl-nixl/ in .git/info/exclude or .gitignore; carry .whl-nixl/parts/01 and
#       .whl-nixl/parts/SHA256SUMS, then `WHL=.whl-nixl scripts/gpu/stage_wheels.sh --install`)
#
# The GPU machine's image already has Python 3.12, torch 2.11.0+cu130, transformers 5.17,
# numpy, tokenizers, jinja2, xxhash, pluggy, prometheus-client, uvloop, httpx, h11, click, rich,
# pyyaml, anyio, multidict, aiohttp, ...; vLLM's lazily imported extras (tilelang, cutlass-dsl,
# quack, humming, tokenspeed, torchcodec, PyNvVideoCodec) are not needed to serve a Llama.
# Versions: vLLM 0.26.0's own pins, the rest as `uv pip compile` resolved them on 2026-11-24
# against that image (shared/gpu/vllm-0.26-wheels.md lists the set that first ran there).
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
source scripts/gpu/wheel_fetch.sh
SET=${1:-vllm}
WHL=.whl
PART_BYTES=$((55 * 1000 * 1000))   # one part per call, leaving room for the working tree

WHEELS=(
  vllm==0.26.0
  # vLLM's compiled and pinned companions
  flashinfer-python==0.6.14 apache-tvm-ffi==0.1.11 nvidia-cudnn-frontend==1.28.0 xgrammar==0.2.8
  llguidance==1.7.6 outlines-core==0.2.14 lm-format-enforcer==0.11.3 compressed-tensors==0.17.0
  depyf==0.20.0 lark==1.2.2 interegular==0.3.3 astor==0.8.1 dill==0.4.1 diskcache==5.6.3
  msgspec==0.22.0 pyzmq==27.3.0 cbor2==6.3.0 blake3==1.0.11 cachetools==8.0.1 gguf==0.17.1
  setproctitle==1.3.8 pybase64==1.5.1 ijson==3.6.0 partial-json-parser==0.2.1.1.post7
  python-json-logger==4.2.0 watchfiles==1.3.0 mistral-common==1.13.1 openai-harmony==0.0.8
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  pydantic-extra-types==2.11.1 pydantic-settings==2.16.3 python-dotenv==1.2.4 pycountry==26.2.16
  email-validator==2.4.0 dnspython==2.9.2
  # vLLM's OpenAI server (the benchmark's baseline) and the openai client the demo uses
  openai==3.54.0 httpx2==2.16.2 httpcore2==2.16.2 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1
  anthropic==2.12.0 docstring-parser==0.18.0 mcp==2.3.0 mcp-types==2.3.0 httpx-sse==0.4.3
  pyjwt==2.15.1 python-multipart==0.0.34 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  referencing==0.37.0 rpds-py==2026.9.1
  fastapi==0.136.3 starlette==1.10.0 uvicorn==0.54.0 sse-starlette==3.7.0
  prometheus-fastapi-instrumentator==8.1.0 model-hosting-container-standards==0.1.16
  supervisor==4.3.0 truststore==0.10.5
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-semantic-conventions-ai==0.5.1 opentelemetry-exporter-otlp==1.45.2
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-proto==1.45.2
  googleapis-common-protos==1.76.0 importlib-metadata==8.7.0 deprecated==1.2.18 jmespath==1.1.0
  loguru==0.7.3 nvtx==0.2.15 pyelftools==0.32 torch-c-dlpack-ext==0.1.5
  # dynamo-core's serving path
  litestar==2.25.0 litestar-htmx==0.5.0 multipart==2.0.1 polyfactory==3.5.0 faker==40.54.0
  rich-click==1.9.9 httptools==0.9.0
  # the plugin's unit tests and the GPU test, run there against the real vLLM
  pytest==8.4.2 iniconfig==2.1.0 pytest-asyncio==1.5.0 pytest-timeout==2.4.0
  # profiling the serving processes under load (bench_vllm.sh with PROFILE=1)
  py-spy==0.4.3
  # disaggregated serving: vLLM's NIXL connector imports `nixl` (a shim choosing nixl-cu13 here,
  # which bundles UCX); dynamo-nixl uses nixl-cu13 directly. Both install with --no-deps.
  nixl==1.5.1 nixl-cu13==1.5.1
)
if [ "$SET" = nixl ]; then
  # The image lacks NIXL (UCX is in its wheel) and msgspec (dynamo-core's RemoteRegion); the
  # ~59 MB wheel travels whole in one part beside a working tree of a few MB.
  WHL=.whl-nixl
  PART_BYTES=$((60 * 1000 * 1000))
  WHEELS=(nixl-cu13==1.5.1 msgspec==0.22.0)
elif [ "$SET" != vllm ]; then
  echo "usage: $0 [vllm|nixl]" >&2
  exit 2
fi

download_wheels "$WHL/all" "${WHEELS[@]}"

pack_wheels "$WHL" "$PART_BYTES"
