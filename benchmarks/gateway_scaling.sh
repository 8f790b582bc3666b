#!/usr/bin/env bash
# Gateway scaling across cores (issue 20 item 3): req/s and TTFT p50/p99 of our frontend with
# 1, 2, 4, 8 HTTP processes (`dynamo frontend --http-workers P`), and of NVIDIA Dynamo 1.6.1's
# frontend (Rust, multi-threaded: one process) with the same load on the same kind of workers.
#
# Each configuration: WORKERS mocker workers at --speedup-ratio SPEEDUP (default 4 at 1000: the
# simulated engine is ~1000x faster than real time, so the gateway is the bottleneck), a fresh
# frontend, then `benchmarks/loadgen.py` (streaming chat, ignore_eos, PROMPT_TOKENS/OUTPUT_TOKENS,
# default 512/64) at each CONCURRENCY level (default "32 128"), one level per loadgen run; the
# frontend's CPU (its whole process tree: supervisor and HTTP processes, or Dynamo's frontend,
# from /proc) is read around each level. Rows go to OUT_JSON (bench-results/gateway_scaling.jsonl)
# and a table is printed at the end (benchmarks/gateway_scaling_table.py).
#
#   bash benchmarks/gateway_scaling.sh                       # here: uv, Dynamo from DYNAMO_VENV
#   PROCS="1 2" SYSTEMS=ours DURATION=8 bash benchmarks/gateway_scaling.sh   # a small run
#
# Knobs (env): PROCS ("1 2 4 8"), SYSTEMS ("ours dynamo"), ROUTER (round-robin; also kv, which
# Dynamo gets as --router-mode kv), WORKERS, SPEEDUP, CONCURRENCY, PROMPT_TOKENS, OUTPUT_TOKENS,
# DURATION (20 s a level), WARMUP (5 s), PORT (8140), ROUNDS (1: repeat the whole sweep, so
# systems alternate), LOADGENS (1: load-generator processes side by side, each with 1/LOADGENS of
# a level's streams, merged into one row: p50s averaged, p99 the worst generator's), LOAD_ARGS
# (more loadgen arguments, e.g. "--vocabulary 200000"), TOKENIZER_DIR (/tmp/router-bench-tok, built from the test tokenizer here).
#
# On the GPU machine (16 cores, Python 3.12, no uv, no network): carry the wheels made by
# scripts/gpu/fetch_gateway_wheels.sh (WHL=.whl-gateway SITE=/root/site-gateway
# scripts/gpu/stage_wheels.sh --install, one part per call) and a tokenizer directory built
# here (`TOKENIZER_DIR=.bench-tok` after the command at the bottom of this header, with .bench-tok
# in .git/info/exclude and in `carry`), then:
#   SITE=/root/site-gateway; source scripts/gpu/dev_env.sh
#   NO_UV=1 DYNAMO_PY=python3 TOKENIZER_DIR=.bench-tok bash benchmarks/gateway_scaling.sh
# A call there runs at most 600 s: a configuration takes about 15 s to start plus
# (WARMUP + DURATION + a few s) a level, so split the sweep over calls, e.g.
# PROCS="1 2" SYSTEMS=ours, then PROCS="4 8" SYSTEMS=ours, then SYSTEMS=dynamo (same OUT_JSON;
# `python3 -m benchmarks.gateway_scaling_table table OUT_JSON` prints them all).
# (dev_env.sh puts the wheels and the repository's packages with their entry points on
# PYTHONPATH; ai-dynamo imports as `dynamo`, ours as `dynamo_core`, so one target holds both).
# Building the tokenizer directory here:
#   uv run python -c "import sys; sys.path.insert(0, 'tests'); from tokenizer_fixture import build_mistral_tokenizer_dir as b; b('.bench-tok')"
# The load generator is one Python process: check its CPU column (loadgen_cpu_s_per_1k times
# req/s / 1000 near 1.0 means it, not the gateway, was the limit).
set -euo pipefail
cd "$(dirname "$0")/.."
procs=${PROCS:-1 2 4 8}
systems=${SYSTEMS:-ours dynamo}
router=${ROUTER:-round-robin}
workers=${WORKERS:-4}
speedup=${SPEEDUP:-1000}
levels=${CONCURRENCY:-32 128}
prompt_tokens=${PROMPT_TOKENS:-512}
output_tokens=${OUTPUT_TOKENS:-64}
duration=${DURATION:-20}
warmup=${WARMUP:-5}
port=${PORT:-8140}
rounds=${ROUNDS:-1}
loadgens=${LOADGENS:-1}
out=${OUT_JSON:-bench-results/gateway_scaling.jsonl}
tok=${TOKENIZER_DIR:-/tmp/router-bench-tok}
model=$(basename "$tok")
if command -v uv > /dev/null && [ -z "${NO_UV:-}" ]; then
  PY=(uv run python)
  DYN=(uv run dynamo)
else
  PY=(python3)
  DYN=(python3 -m dynamo_core.cli.main)
fi
dynamo_py=${DYNAMO_PY:-${DYNAMO_VENV:-/work/venvs/dynamo161}/bin/python}
mkdir -p "$(dirname "$out")" bench-results
if [ ! -f "$tok/tokenizer.json" ]; then
  "${PY[@]}" -c "import sys; sys.path.insert(0, 'tests'); from tokenizer_fixture import build_mistral_tokenizer_dir as b; b('$tok')"
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
  pids=()
}
trap stop_all EXIT
source benchmarks/serve.sh  # chat_answers

wait_ready() {  # wait_ready LOG PROBES: PROBES requests in a row succeed (each may reach another process)
  local log=$1 probes=$2 ok=0
  for _ in $(seq 1 480); do
    if chat_answers "$port" "$model"; then ok=$((ok + 1)); else ok=0; fi
    if [ "$ok" -ge "$probes" ]; then sleep 2; return 0; fi
    kill -0 "${pids[0]}" 2> /dev/null || break
    sleep 0.25
  done
  echo "the frontend did not come up; see $log*" >&2
  tail -5 "$log"* >&2 || true
  return 1
}

start_ours() {  # start_ours P LOG
  local p=$1 log=$2 disc
  disc=$(mktemp -d)
  DYN_FILE_DISCOVERY_DIR=$disc DYN_LOG=warn "${DYN[@]}" frontend --router "$router" --http-port "$port" \
    --http-workers "$p" > "$log.frontend" 2>&1 &
  pids+=($!)
  for i in $(seq 1 "$workers"); do
    DYN_FILE_DISCOVERY_DIR=$disc DYN_LOG=warn "${DYN[@]}" worker --engine mocker --model "$tok" \
      --speedup-ratio "$speedup" > "$log.worker$i" 2>&1 &
    pids+=($!)
  done
  # Every process must have found every worker: probe until a run of requests all succeed,
  # then until each process's /health lists them all.
  wait_ready "$log" $((4 * p))
  for _ in $(seq 1 240); do
    local short=0
    for _ in $(seq 1 $((4 * p))); do
      [ "$(curl -sf "localhost:$port/health" | grep -o instance_id | wc -l)" -ge "$workers" ] || short=1
    done
    [ "$short" = 0 ] && return 0
    sleep 0.25
  done
  echo "not every HTTP process sees $workers workers; see $log*" >&2
  return 1
}

start_dynamo() {  # start_dynamo LOG
  local log=$1 disc mode=$router
  disc=$(mktemp -d)
  [ "$mode" = kv ] || mode=round-robin
  local common=(--discovery-backend file --request-plane tcp --event-plane zmq)
  DYN_FILE_KV=$disc DYN_LOG=warn "$dynamo_py" -m dynamo.frontend --router-mode "$mode" --http-port "$port" \
    "${common[@]}" > "$log.frontend" 2>&1 &
  pids+=($!)
  DYN_FILE_KV=$disc DYN_LOG=warn "$dynamo_py" -m dynamo.mocker --model-path "$tok" --model-name "$model" \
    --num-workers "$workers" --speedup-ratio "$speedup" "${common[@]}" > "$log" 2>&1 &
  pids+=($!)
  wait_ready "$log" 3
}

run_levels() {  # run_levels LABEL: one loadgen run per level, the frontend tree's CPU around each
  local label=$1 frontend_pid=${pids[0]} level before after
  for level in $levels; do
    before=$("${PY[@]}" -m benchmarks.proc_cpu --tree "$frontend_pid")
    if [ "$loadgens" = 1 ]; then
      "${PY[@]}" -m benchmarks.loadgen --url "http://127.0.0.1:$port" --model "$model" --concurrency "$level" \
        --duration "$duration" --warmup "$warmup" --prompt-tokens "$prompt_tokens" \
        --output-tokens "$output_tokens" --label "$label" --json-out "$out" ${LOAD_ARGS:-}
    else  # LOADGENS generators side by side, level/LOADGENS streams each, merged into one row
      local parts=() gens=() g
      for g in $(seq 1 "$loadgens"); do
        parts+=("$out.gen$g")
        rm -f "$out.gen$g"
        "${PY[@]}" -m benchmarks.loadgen --url "http://127.0.0.1:$port" --model "$model" \
          --concurrency $((level / loadgens)) --duration "$duration" --warmup "$warmup" \
          --prompt-tokens "$prompt_tokens" --output-tokens "$output_tokens" --label "$label" \
          --json-out "$out.gen$g" ${LOAD_ARGS:-} > "$out.gen$g.log" 2>&1 &
        gens+=($!)
      done
      for g in "${gens[@]}"; do wait "$g"; done
      "${PY[@]}" -m benchmarks.gateway_scaling_table merge "$out" "${parts[@]}"
      rm -f "${parts[@]}"
    fi
    after=$("${PY[@]}" -m benchmarks.proc_cpu --tree "$frontend_pid")
    "${PY[@]}" -m benchmarks.gateway_scaling_table annotate "$out" "$before" "$after" \
      "processes=${label##*=}" "cpus=$(nproc)" "load=$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)"
  done
}

for round in $(seq 1 "$rounds"); do
  for system in $systems; do
    case $system in
      ours)
        for p in $procs; do
          log="bench-results/gateway-scaling-ours-$p.log"
          start_ours "$p" "$log"
          run_levels "ours $router http-workers=$p"
          stop_all
        done ;;
      dynamo)
        log="bench-results/gateway-scaling-dynamo.log"
        start_dynamo "$log"
        run_levels "dynamo-1.6.1 $router processes=1"
        stop_all ;;
      *) echo "unknown system $system (ours, dynamo)" >&2; exit 2 ;;
    esac
  done
done
"${PY[@]}" -m benchmarks.gateway_scaling_table table "$out"
