#!/usr/bin/env bash
# Gateway vs NVIDIA Dynamo 1.6.1 (issue 20): the same load through our `dynamo serve` and through
# Dynamo's frontend, each with 2 mocker workers at --speedup-ratio 1000 (a 64-token stream takes
# well under a millisecond of simulated engine time, so the gateway is the bottleneck), the same
# tokenizer (tests/tokenizer_fixture.py's Mistral tokenizer, context raised to 32k for the long
# prompts), round-robin routing on both, streaming chat with ignore_eos.
#
# For each row, PAIRS times: our run, then Dynamo's (alternating, so drift on a shared machine
# falls on both), each on a fresh server, results appended to OUT_JSON (one JSON line a level,
# labelled "ROW ours|dynamo PAIR"). `python -m benchmarks.gateway_table OUT_JSON` prints the table.
# Rows (ROWS, default all):
#   c32-512   512-token prompts, 64 output tokens, 32 streams (closed loop)
#   c128-512  the same at 128 streams
#   c32-16    16-token prompts, 16 output tokens, 32 streams
#   r-16k     16k-token prompts, 16 output tokens, open loop at RATES_16K (default 10,20) a second
#   r-8k      8k-token prompts, 16 output tokens, open loop at 20 a second, ours with
#             --preprocess-workers 2 (Dynamo's frontend has no such pool; it tokenizes on its threads)
# Frontend CPU: loadgen --cpu-of sums /proc CPU of the frontend processes (ours: `dynamo frontend`,
# which `dynamo serve` starts; Dynamo's: `python -m dynamo.frontend`), reported as CPU-ms a request.
#   bash benchmarks/gateway_comparison.sh               # PAIRS=2 DURATION=15 WARMUP=5
#   ROWS=c32-512 PAIRS=3 OUR_ARGS="--some-flag" LABEL_SUFFIX=" after" bash benchmarks/gateway_comparison.sh
# LOAD_ARGS: more loadgen arguments for every row (e.g. "--vocabulary 200000": prompt words drawn
# by Zipf's law from 200k made-up words, so a per-word token cache meets a realistic hit rate).
# SETTLE (default 10): seconds between a server's start and its load.
# DYNAMO_VENV (default /work/venvs/dynamo161): Dynamo 1.6.1 installed apart from this repo (see
# kv_workloads.sh for how). PORT (default 23100) and PORT+1.. are used.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-23100}
pairs=${PAIRS:-2}
duration=${DURATION:-15}
warmup=${WARMUP:-5}
dynamo_venv=${DYNAMO_VENV:-/work/venvs/dynamo161}
out=${OUT_JSON:-bench-results/gateway_comparison.jsonl}
tok=${TOKENIZER_DIR:-/tmp/gateway-bench-tok/mistral-32k}
model=$(basename "$tok")
blocks=${KV_BLOCKS:-16384}
mkdir -p "$(dirname "$out")" bench-results
[ -f "$tok/tokenizer.json" ] || uv run python -c "
import json, sys; sys.path.insert(0, 'tests')
from pathlib import Path
from tokenizer_fixture import build_mistral_tokenizer_dir
p = build_mistral_tokenizer_dir(Path('$tok'))
for name, key in (('config.json', 'max_position_embeddings'), ('tokenizer_config.json', 'model_max_length')):
    d = json.loads((p / name).read_text()); d[key] = 32768; (p / name).write_text(json.dumps(d, indent=2))"
source benchmarks/serve.sh

# Only this run's frontend: the port tells it from other frontends on a shared machine.
ours_cpu="(bin/dynamo|dynamo_core[.]cli[.]main) frontend .*--http-port $port( |\$)"
dynamo_cpu="-m dynamo[.]frontend .*--http-port $port( |\$)"

dynamo_pids=()
start_dynamo() {  # start_dynamo LOG
  local log=$1 disc
  disc=$(mktemp -d)
  export DYN_FILE_KV=$disc DYN_LOG=warn
  local common=(--discovery-backend file --request-plane tcp --event-plane zmq)
  "$dynamo_venv/bin/python" -m dynamo.frontend --router-mode round-robin --http-port "$port" \
    --kv-cache-block-size 16 "${common[@]}" > "$log.frontend" 2>&1 &
  dynamo_pids+=($!)
  "$dynamo_venv/bin/python" -m dynamo.mocker --model-path "$tok" --model-name "$model" --num-workers 2 \
    --block-size 16 --num-gpu-blocks-override "$blocks" --speedup-ratio 1000 "${common[@]}" > "$log" 2>&1 &
  dynamo_pids+=($!)
  wait_for_chat "$port" "$model" 2 "$log"
}
stop_dynamo() {
  for pid in "${dynamo_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${dynamo_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  dynamo_pids=()
}
trap 'stop_serve; stop_dynamo' EXIT

row_load() {  # the loadgen arguments of a row
  case $1 in
    c32-512) echo "--concurrency 32 --prompt-tokens 512 --output-tokens 64" ;;
    c128-512) echo "--concurrency 128 --prompt-tokens 512 --output-tokens 64" ;;
    c32-16) echo "--concurrency 32 --prompt-tokens 16 --output-tokens 16" ;;
    r-16k) echo "--rate ${RATES_16K:-10,20} --prompt-tokens 16000 --output-tokens 16" ;;
    r-8k) echo "--rate 20 --prompt-tokens 8000 --output-tokens 16" ;;
    *) echo "unknown row $1" >&2; return 1 ;;
  esac
}
row_server() {  # extra `dynamo serve` arguments of a row (ours only)
  case $1 in
    r-8k) echo "--preprocess-workers 2" ;;
    *) echo "" ;;
  esac
}

for row in ${ROWS:-c32-512 c128-512 c32-16 r-16k r-8k}; do
  load=$(row_load "$row")
  for pair in $(seq 1 "$pairs"); do
    for side in ours dynamo; do
      log="bench-results/gateway-$row-$side-$pair.log"
      echo "== $row $side pair $pair ($(uptime | sed 's/.*load/load/'))"
      if [ "$side" = ours ]; then
        # shellcheck disable=SC2046
        DYN_FILE_DISCOVERY_DIR=$(mktemp -d) start_serve "$port" 2 "$log" --engine mocker --router round-robin \
          --workers 2 --model "$tok" --block-size 16 --num-gpu-blocks "$blocks" --speedup-ratio 1000 \
          $(row_server "$row") ${OUR_ARGS:-}
        cpu_of=$ours_cpu
      else
        start_dynamo "$log"
        cpu_of=$dynamo_cpu
      fi
      # Startup work (our prompt pool's processes import and load the tokenizer for ~1 CPU-s
      # after /health is up) is not the load's: let it end before the CPU is sampled.
      sleep "${SETTLE:-10}"
      # shellcheck disable=SC2086
      uv run python -m benchmarks.loadgen --url "http://127.0.0.1:$port" --model "$model" $load \
        --duration "$duration" --warmup "$warmup" --cpu-of "$cpu_of" ${LOAD_ARGS:-} \
        --label "$row $side $pair${LABEL_SUFFIX:-}" --json-out "$out" | tail -4
      echo "load after: $(uptime | sed 's/.*load average: //')"
      stop_serve
      stop_dynamo
    done
  done
done
