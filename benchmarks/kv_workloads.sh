#!/usr/bin/env bash
# KV routing on workloads nobody tuned on (issue 21), side by side with NVIDIA Dynamo 1.6.1.
# For each workload and router: 4 mocker workers at real-time speed (block 16, 1,024 KV blocks
# each), a fresh server, `loadgen.py` at each concurrency level, the server stopped again.
#
# Workloads (WORKLOADS, default both):
#   shared-prompts  48 shared 700-token system prompts, a 40-token unique user message each
#   multi-turn      chats of 6 turns: each turn resends the chat so far plus 64 new tokens
#                   (the first turn a 300-token message with one of 48 shared 200-token openings)
# Levels (LEVELS, default 4,8,16): concurrent streams; 16 is the issue's load, called 100% of
# capacity below, 8 and 4 are 50% and 25%.
# Routers (ROUTERS, default "kv round-robin least-loaded dynamo-kv dynamo-round-robin"): ours by
# name; kv-2fe: `dynamo worker` × 4 and two `dynamo frontend --router kv` sharing their
# in-flight requests over a nats-server of their own (--event-plane nats), the load generator's
# streams dealt to both; kv-2fe-unshared: the same two frontends without sharing (their
# --event-plane tcp; they still get the workers' KV events over NATS); dynamo-* run `python -m dynamo.frontend --router-mode *` and `python -m dynamo.mocker
# --num-workers 4` from DYNAMO_VENV (default /work/venvs/dynamo161, installed apart from this
# repo: uv venv /work/venvs/dynamo161 && uv pip install -p /work/venvs/dynamo161
# ai-dynamo==1.6.1 ai-dynamo-runtime==1.6.1; its dependency `aisimulate` is a stub that needs
# pypi.nvidia.com: `--overrides` with "aisimulate; sys_platform == 'never'" leaves it out).
#
# Timing: our mocker runs a prefill-dominated profile, --prefill-tokens-per-s PREFILL_RATE
# (default 2000: a 740-token prompt takes 0.37 s, one decode step stays 7 ms), so TTFT shows
# what placement saves. Dynamo's mocker has no such flag and runs its own default timing, so
# its TTFT compares with its own round-robin only; its hit rate compares with ours directly.
#   bash benchmarks/kv_workloads.sh            # results appended to bench-results/kv_workloads.jsonl
# DURATION / WARMUP (s a level), OUTPUT_TOKENS, ROUTER_ARGS (added to ours, e.g.
# "--kv-overlap-weight 4") and LABEL_SUFFIX as in router_comparison.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8137}
levels=${LEVELS:-4,8,16}
duration=${DURATION:-15}
warmup=${WARMUP:-4}
output_tokens=${OUTPUT_TOKENS:-16}
prefill_rate=${PREFILL_RATE:-2000}
dynamo_venv=${DYNAMO_VENV:-/work/venvs/dynamo161}
out=${OUT_JSON:-bench-results/kv_workloads.jsonl}
tok=${TOKENIZER_DIR:-/tmp/router-bench-tok}
model=$(basename "$tok")
mkdir -p "$(dirname "$out")" bench-results
[ -f "$tok/tokenizer.json" ] || uv run python -c \
  "import sys; sys.path.insert(0, 'tests'); from tokenizer_fixture import build_mistral_tokenizer_dir as b; b('$tok')"
source benchmarks/serve.sh

bg_pids=()
start_dynamo() {  # start_dynamo ROUTER_MODE LOG
  local mode=$1 log=$2 disc
  disc=$(mktemp -d)
  export DYN_FILE_KV=$disc DYN_LOG=warn
  local common=(--discovery-backend file --request-plane tcp --event-plane zmq)
  "$dynamo_venv/bin/python" -m dynamo.frontend --router-mode "$mode" --http-port "$port" \
    --kv-cache-block-size 16 "${common[@]}" > "$log.frontend" 2>&1 &
  bg_pids+=($!)
  "$dynamo_venv/bin/python" -m dynamo.mocker --model-path "$tok" --model-name "$model" --num-workers 4 \
    --block-size 16 --num-gpu-blocks-override 1024 "${common[@]}" > "$log" 2>&1 &
  bg_pids+=($!)
  wait_for_chat "$port" "$model" 3 "$log"
}
stop_background() {  # what start_dynamo and start_split started
  for pid in "${bg_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${bg_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  bg_pids=()
}
trap 'stop_serve; stop_background' EXIT

# Two frontends over one NATS: start_split LOG FRONTEND_EVENT_PLANE; sets urls.
start_split() {
  local log=$1 plane=$2 nats_port=$((port + 1000)) disc
  disc=$(mktemp -d)
  nats-server -a 127.0.0.1 -p "$nats_port" > "$log.nats" 2>&1 &
  bg_pids+=($!)
  local nats=(--nats-url "nats://127.0.0.1:$nats_port")
  for i in 1 2 3 4; do
    DYN_FILE_DISCOVERY_DIR=$disc uv run dynamo worker --engine mocker --model "$tok" --block-size 16 \
      --num-gpu-blocks 1024 --speedup-ratio 1 --prefill-tokens-per-s "$prefill_rate" --event-plane nats \
      "${nats[@]}" > "$log.worker$i" 2>&1 &
    bg_pids+=($!)
  done
  for p in "$port" $((port + 1)); do
    DYN_FILE_DISCOVERY_DIR=$disc uv run dynamo frontend --router kv --http-port "$p" --event-plane "$plane" \
      "${nats[@]}" ${ROUTER_ARGS:-} > "$log.frontend$p" 2>&1 &
    bg_pids+=($!)
  done
  urls="http://127.0.0.1:$port,http://127.0.0.1:$((port + 1))"
  for _ in $(seq 1 240); do
    if [ "$(curl -sf "localhost:$port/health" | grep -o instance_id | wc -l)" -ge 4 ] &&
       [ "$(curl -sf "localhost:$((port + 1))/health" | grep -o instance_id | wc -l)" -ge 4 ]; then return 0; fi
    sleep 0.5
  done
  echo "two frontends did not come up; see $log*" >&2
  return 1
}

workload_args() {
  case $1 in
    # 763: the calibration lands ≈13 tokens short (the 48 prefixes tokenize unevenly), so the
    # prompts come out at ≈750 = 10 (chat template) + 700 (shared) + 40 (unique).
    shared-prompts) echo "--prompt-tokens ${SHARED_PROMPTS_TOKENS:-763} --shared-prefix-tokens 700 --prefix-groups 48" ;;
    multi-turn) echo "--prompt-tokens 300 --shared-prefix-tokens 200 --prefix-groups 48 --turns 6 --turn-tokens 64" ;;
    *) echo "unknown workload $1" >&2; return 1 ;;
  esac
}

for workload in ${WORKLOADS:-shared-prompts multi-turn}; do
  wargs=$(workload_args "$workload")
  for router in ${ROUTERS:-kv round-robin least-loaded dynamo-kv dynamo-round-robin}; do
    log="bench-results/kv-workloads-$workload-$router.log"
    urls="http://127.0.0.1:$port"
    case $router in
      dynamo-*) start_dynamo "${router#dynamo-}" "$log" ;;
      kv-2fe) start_split "$log" nats ;;
      kv-2fe-unshared) start_split "$log" tcp ;;
      *) DYN_FILE_DISCOVERY_DIR=$(mktemp -d) start_serve "$port" 4 "$log" --router "$router" --workers 4 \
           --model "$tok" --block-size 16 --num-gpu-blocks 1024 --speedup-ratio 1 \
           --prefill-tokens-per-s "$prefill_rate" ${ROUTER_ARGS:-} ;;
    esac
    # shellcheck disable=SC2086
    uv run python -m benchmarks.loadgen --url "$urls" --model "$model" --concurrency "$levels" \
      --duration "$duration" --warmup "$warmup" --output-tokens "$output_tokens" $wargs \
      --label "$workload $router${LABEL_SUFFIX:-}" --json-out "$out"
    stop_serve
    stop_background
  done
done
