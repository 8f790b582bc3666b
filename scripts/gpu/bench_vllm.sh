#!/usr/bin/env bash
# dynamo in front of vLLM against `vllm serve`: bench_engine.sh with ENGINE=vllm (see there).
#   scripts/gpu/bench_vllm.sh dynamo vllm dynamo vllm
exec env ENGINE=vllm "$(dirname "$0")/bench_engine.sh" "$@"
