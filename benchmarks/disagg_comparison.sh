#!/usr/bin/env bash
# Aggregated vs disaggregated serving with the same number of mocker workers (default 4), on
# a long-prompt workload, at the mocker's real-time speed (speedup 1: the KV transfer takes
# real time, so simulated compute must too).
#   bash benchmarks/disagg_comparison.sh [CONCURRENCY_LIST] [DURATION]
# Env: PROMPT_TOKENS (4096), OUTPUT_TOKENS (128), KV_BYTES_PER_TOKEN (8192),
#      CONFIGS ("agg:4 disagg:2:2:tcp disagg:2:2:nixl disagg:1:3:tcp"), JSON_OUT (file for rows).
set -euo pipefail
cd "$(dirname "$0")/.."
levels=${1:-4,8,16}
duration=${2:-30}
prompt=${PROMPT_TOKENS:-4096}
output=${OUTPUT_TOKENS:-128}
kv_bytes=${KV_BYTES_PER_TOKEN:-8192}
configs=${CONFIGS:-"agg:4 disagg:2:2:tcp disagg:2:2:nixl disagg:1:3:tcp"}
port=8141
source benchmarks/serve.sh
tmp=$(mktemp -d)
mkdir -p bench-results
trap 'stop_serve; rm -rf "$tmp"' EXIT
for config in $configs; do
  IFS=: read -r mode a b transfer <<< "$config"
  if [ "$mode" = agg ]; then
    args=(--workers "$a"); workers=$a; label="agg ${a}w"
  else
    args=(--disagg --prefill-workers "$a" --decode-workers "$b" --transfer "$transfer"
          --disagg-min-prompt-tokens 512 --kv-bytes-per-token "$kv_bytes")
    workers=$((a + b)); label="${a}P+${b}D $transfer"
  fi
  echo "== $label"
  if ! DYN_FILE_DISCOVERY_DIR=$tmp/disc-${config//:/-} start_serve $port "$workers" \
      "bench-results/serve-disagg-${config//:/-}.log" "${args[@]}"; then
    continue  # e.g. --transfer nixl without the plugin: the other configurations still run
  fi
  uv run python -m benchmarks.loadgen --url "http://127.0.0.1:$port" --concurrency "$levels" --duration "$duration" \
    --warmup 5 --prompt-tokens "$prompt" --output-tokens "$output" --label "$label" ${JSON_OUT:+--json-out "$JSON_OUT"}
  curl -s "localhost:$port/metrics" | grep -E '^dynamo_frontend_(kv_transfer_(bytes|seconds_(sum|count))|disagg_(requests|fallbacks))_?[a-z]*\{' \
    | grep -v _created || true
  stop_serve
done
