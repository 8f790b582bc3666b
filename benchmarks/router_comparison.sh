#!/usr/bin/env bash
# Replay the shared production traces through `dynamo serve` once per router and print one
# table per trace. 4 mocker workers at realistic speed (H100 profile, --speedup-ratio 1) with
# 4096 KV blocks each (64k tokens): far below the replayed working set.
#   bash benchmarks/router_comparison.sh [MAX_REQUESTS] [TIME_SCALE] [TOKEN_SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
max_requests=${1:-2000}
time_scale=${2:-8}
token_scale=${3:-0.0625}
traces_dir=${TRACES_DIR:-../shared/data/traces}
out=${OUT_JSON:-bench-results/router_comparison.jsonl}
mkdir -p "$(dirname "$out")"
port=8131
for trace in conversation_trace synthetic_trace; do
  for router in kv round-robin least-loaded; do
    disc=$(mktemp -d)
    DYN_FILE_DISCOVERY_DIR=$disc uv run dynamo serve --router "$router" --workers 4 --num-gpu-blocks 4096 \
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
