#!/usr/bin/env bash
# Replay the shared production traces through `dynamo serve` once per router, with 4 mocker
# workers whose model is scaled consistently with the replay:
# - prompts are cut by TOKEN_SCALE, so the mocker's prefill rate is cut by the same factor
#   (a scaled prompt costs what the full one costs on the H100 profile), and so is its KV
#   capacity (an H100 holds ~470k tokens of an 8B model's KV: here 1024 blocks of 16);
# - arrivals are sped up by TIME_SCALE, and so is the mocker (--speedup-ratio).
# The system then carries the trace's real load, only faster and with shorter token runs.
#   bash benchmarks/router_comparison.sh [MAX_REQUESTS] [TIME_SCALE] [TOKEN_SCALE]
# KV_BLOCKS=N overrides the per-worker KV capacity (e.g. an engine with host-memory offload);
# ENGINE_SPEED=F makes each engine F times faster than the H100 profile (F=2: half the load);
# TRACES / ROUTERS narrow the runs; ROUTER_ARGS adds router flags (e.g. "--kv-overlap-weight 2"),
# LABEL_SUFFIX tells such runs apart in the results; PORT (default 8131) is the server's HTTP port.
set -euo pipefail
cd "$(dirname "$0")/.."
max_requests=${1:-100000}
time_scale=${2:-24}
token_scale=${3:-0.03125}
prefill_rate=$(python3 -c "print(12000 * $token_scale)")
engine_speedup=$(python3 -c "print($time_scale * ${ENGINE_SPEED:-1})")
# The attention terms scale with context length: shrink the prefill "doubling context" and grow
# the decode cost per KV token by the same factor, so a scaled context costs what the full one does.
doubling=$(python3 -c "print(max(1, round(32768 * $token_scale)))")
per_kv=$(python3 -c "print(0.045 / $token_scale)")
kv_blocks=${KV_BLOCKS:-$(python3 -c "print(max(64, round(470000 * $token_scale / 16)))")}
traces_dir=${TRACES_DIR:-benchmarks/traces}
out=${OUT_JSON:-bench-results/router_comparison.jsonl}
mkdir -p "$(dirname "$out")"
port=${PORT:-8131}
source benchmarks/serve.sh
mkdir -p bench-results
trap stop_serve EXIT
for trace in ${TRACES:-conversation_trace synthetic_trace}; do
  for router in ${ROUTERS:-kv round-robin least-loaded}; do
    disc=$(mktemp -d)
    DYN_FILE_DISCOVERY_DIR=$disc start_serve $port 4 "bench-results/serve-$trace-$router.log" \
      --router "$router" --workers 4 --num-gpu-blocks "$kv_blocks" \
      --prefill-tokens-per-s "$prefill_rate" --prefill-doubling-context "$doubling" \
      --decode-ms-per-1k-kv-tokens "$per_kv" --speedup-ratio "$engine_speedup" ${ROUTER_ARGS:-}
    uv run python -m benchmarks.trace_replay --url "http://127.0.0.1:$port" --trace "$traces_dir/$trace.jsonl" \
      --max-requests "$max_requests" --time-scale "$time_scale" --token-scale "$token_scale" \
      --label "$router${LABEL_SUFFIX:-}" --json-out "$out"
    stop_serve
    rm -rf "$disc"
  done
done
