#!/usr/bin/env bash
# The core gateway benchmark (2 mocker workers at --speedup-ratio 1000, ~512-token prompts,
# 64 output tokens) through the TCP request plane and through NATS (request + event planes),
# to show what NATS adds per request. Needs nats-server on PATH (Debian: nats-server).
#   bash benchmarks/request_plane_comparison.sh [CONCURRENCY_LIST] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
levels=${1:-8,32,128}
duration=${2:-10}
port=8132
nats_port=4232
tmp=$(mktemp -d)
nats-server -a 127.0.0.1 -p $nats_port -js -sd "$tmp/nats" > "$tmp/nats.log" 2>&1 &
nats=$!
source benchmarks/serve.sh
mkdir -p bench-results
trap 'stop_serve; kill $nats 2>/dev/null || true; rm -rf "$tmp"' EXIT
for plane in tcp nats; do
  DYN_FILE_DISCOVERY_DIR=$tmp/disc-$plane start_serve $port 2 "bench-results/serve-plane-$plane.log" \
    --workers 2 --speedup-ratio 1000 --request-plane $plane --event-plane $plane --nats-url nats://127.0.0.1:$nats_port
  echo "== request plane: $plane"
  uv run python -m benchmarks.loadgen --url "http://127.0.0.1:$port" --concurrency "$levels" --duration "$duration" \
    --warmup 2 --label "$plane"
  stop_serve
done
