#!/usr/bin/env bash
# Download the wheels the GPU machine lacks for SGLang 0.5.15 (its image: Python 3.12, torch
# 2.11.0+cu130), plus NIXL and dynamo-core's own serving needs, and pack them into parts that
# each fit one `run` call. Run from the repository root on a machine with PyPI access:
#
#   scripts/gpu/fetch_sglang_wheels.sh       # -> .whl-sglang/all, .whl-sglang/parts/01..NN (+ SHA256SUMS)
#   EXTRA="xgrammar==0.2.1" scripts/gpu/fetch_sglang_wheels.sh   # adds optional wheels
#
# then on the GPU machine, one part per call (each within 30 s of the last):
#   WHL=.whl-sglang SITE=/root/site-sglang scripts/gpu/stage_wheels.sh [--install]
#
# The set is what `sglang.Engine` needs to serve a Llama with attention_backend=triton and
# sampling_backend=pytorch, and what `python -m sglang.launch_server` (the benchmark's baseline)
# adds; shared/gpu/sglang-0.5.15.md says why each wheel is there and what was left out.
# sglang-kernel is slimmed: the PyPI wheel minus sgl_kernel/flash_ops.abi3.so (the FA3 kernels,
# 578 MB of its 615), with RECORD to match; only attention_backend=fa3 imports that library.
# SGLang pins transformers 5.12.1 and flashinfer 0.6.12 where vLLM 0.26 wants 5.17 and 0.6.14:
# install into a target of its own (SITE=/root/site-sglang), never vLLM's /root/site.
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
source scripts/gpu/wheel_fetch.sh
WHL=.whl-sglang
PART_BYTES=$((58 * 1000 * 1000))   # one part per call, leaving room for the working tree (64 MiB in all)

WHEELS=(
  # the engine
  sglang==0.5.15 sglang-kernel==0.4.4 flashinfer-python==0.6.12 apache-tvm-ffi==0.1.11
  torch-c-dlpack-ext==0.1.5 transformers==5.12.1 tokenizers==0.22.2
  pyzmq==27.3.0 msgspec==0.23.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0
  python-multipart==0.0.34 opentelemetry-api==1.45.2 orjson==3.13.0 pybase64==1.5.1
  partial-json-parser==0.2.1.1.post7 setproctitle==1.3.8 dill==0.4.1 gguf==0.19.0
  compressed-tensors==0.20.1 loguru==0.7.3 openai==2.6.1 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1
  # sglang/utils.py imports IPython.display at module level
  ipython==9.18.1 ipython-pygments-lexers==1.1.1 jedi==0.20.1 parso==0.8.7 pexpect==4.9.0
  ptyprocess==0.7.0 prompt-toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 executing==2.3.0
  asttokens==3.0.2 pure-eval==0.2.4 matplotlib-inline==0.2.2 traitlets==5.16.1
  # SGLang's HTTP server (python -m sglang.launch_server)
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  soundfile==0.13.1 cffi==2.1.1 pycparser==3.12
  # disaggregation: --disaggregation-transfer-backend nixl imports `nixl` (a shim choosing
  # nixl-cu13 here, which bundles UCX)
  nixl==1.5.1 nixl-cu13==1.5.1
  # dynamo-core's serving path, the GPU tests and profiling (bench_engine.sh with PROFILE=1)
  litestar==2.25.0 litestar-htmx==0.5.0 multipart==2.0.1 polyfactory==3.5.0 faker==40.54.0
  rich-click==1.9.9 httptools==0.9.0 pytest-asyncio==1.5.0 py-spy==0.4.3
  # the random test model's tokenizer (tests/tokenizer_fixture.py reads its sentencepiece model)
  mistral-common==1.13.1
)
# shellcheck disable=SC2206
WHEELS+=(${EXTRA:-})

download_wheels "$WHL/all" "${WHEELS[@]}"

# Slim sglang-kernel in place (a no-op when it already is).
python3 - "$WHL"/all/sglang_kernel-0.4.4-*.whl <<'PY'
import os, sys, zipfile
src, drop = sys.argv[1], "sgl_kernel/flash_ops.abi3.so"
with zipfile.ZipFile(src) as zin:
    if drop not in zin.namelist():
        sys.exit(0)
    with zipfile.ZipFile(src + ".tmp", "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename == drop:
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [l for l in data.decode().splitlines() if l.split(",")[0] != drop]
                data = ("\n".join(lines) + "\n").encode()
            zout.writestr(info, data)
os.replace(src + ".tmp", src)
print("slimmed", os.path.basename(src), os.path.getsize(src) // 10**6, "MB")
PY

pack_wheels "$WHL" "$PART_BYTES"
