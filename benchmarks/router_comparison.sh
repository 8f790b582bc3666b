#!/usr/bin/env bash
# Replay the shared production traces through `dynamo serve` once per router, with 4 mocker
# workers whose model is scaled consistently with the replay:
# - prompts are cut by TOKEN_SCALE, so the mocker's prefill rate is cut by the same factor
#   (a scaled prompt costs what the full one costs on the H100 profile), and so is its KV
#   capacity (an H100 holds ~470k tokens of an 8B model's KV: here 1024 blocks of 16);
# - arrivals are sped up by TIME_SCALE, and so is the mocker (--speedup-ratio).
# The system then carries the trace's real load, only faster and with shorter token runs.
#   bash benchmarks/router_comparison.sh [MAX_REQUESTS] [TIME_SCALE] [TOKEN_SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
max_requests=${1:-100000}
time_scale=${2:-24}
token_scale=${3:-0.03125}
prefill_rate=$(python3 -c "print(12000 * $token_scale)")
kv_blocks=$(python3 -c "print(max(64, round(470000 * $token_scale / 16)))")
traces_dir=${TRACES_DIR:-../shared/data/traces}
out=${OUT_JSON:-bench-results/router_comparison.jsonl}
mkdir -p "$(dirname "$out")"
port=8131
for trace in conversation_trace synthetic_trace; do
  for router in kv round-robin least-loaded; do
    disc=$(mktemp -d)
    DYN_FILE_DISCOVERY_DIR=$disc uv run dynamo serve --router "$router" --workers 4 --num-gpu-blocks "$kv_blocks" \
      --prefill-tokens-per-s "$prefill_rate" --speedup-ratio "$time_scale" \
      --http-port $port > "bench-results/serve-$router.log" 2>&1 &
    serve=$!
    for _ in $(seq 1 120); do
      if curl -sf "localhost:$port/health" | grep -o instance_id | wc -l | grep -q '^4$'; then break; fi
      sleep 0.5
    done
    uv run python -m benchmarks.trace_replay --url "http://127.0.0.1:$port" --trace "$traces_dir/$trace.jsonl" \
      --max-requests "$max_requests" --time-scale "$time_scale" --token-scale "$token_scale" \
      --label "$router" --json-out "$out"
    kill -TERM $serve; wait $serve || true
    rm -rf "$disc"
  done
done
