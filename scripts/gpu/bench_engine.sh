#!/usr/bin/env bash
# On the GPU machine, from the repository root, after stage_wheels.sh --install: dynamo in
# front of an engine against that engine's own OpenAI server, side by side, on the same model,
# engine flags, GPU and load. ENGINE picks the engine (vllm by default, or sglang, whose wheels
# live in SITE=/root/site-sglang); each argument is one run, in order, so the two servers can
# alternate on one machine:
#
#   scripts/gpu/bench_engine.sh dynamo vllm dynamo vllm
#   ENGINE=sglang SITE=/root/site-sglang scripts/gpu/bench_engine.sh dynamo sglang dynamo sglang
#     dynamo: dynamo serve --engine $ENGINE --router kv (one worker)
#     vllm:   vllm serve (vLLM's own OpenAI server)
#     sglang: python -m sglang.launch_server (SGLang's own OpenAI server)
#
# Load: benchmarks.loadgen, 32 concurrent streaming chat clients, ~512 prompt and 128 output
# tokens (ignore_eos), 5 s warm-up then 30 s measured. Results append to $OUT/bench.jsonl
# (labelled SIDE-N); each run's server output, the serving processes' CPU seconds before and
# after the load, and the load's table go to $OUT/run-N-SIDE.log. PROFILE=1 also samples the
# serving processes' Python stacks with py-spy (profile-N-SIDE-ROLE.txt, collapsed stacks).
set -euo pipefail
source scripts/gpu/dev_env.sh
ENGINE=${ENGINE:-vllm}
[ $# -gt 0 ] || { echo "usage: [ENGINE=vllm|sglang] $0 dynamo|$ENGINE [dynamo|$ENGINE ...]" >&2; exit 2; }
LOGS=${OUT:-$PWD/gpu-out}
mkdir -p "$LOGS"
make_model
NAME=$(basename "$DYN_TEST_MODEL_DIR")
PORT=8000
case "$ENGINE" in
  # vLLM's defaults otherwise (CUDA graphs, torch.compile, prefix caching), identical on both sides.
  vllm) ENGINE_FLAGS=(--gpu-memory-utilization 0.5 --max-model-len 4096) ;;
  # SGLang's defaults otherwise (CUDA graphs, radix cache), identical on both sides; the
  # backends the carried wheel set supports (shared/gpu/sglang-0.5.15.md), and dynamo's page
  # size (SGLang's own default is 1) on both sides.
  sglang) ENGINE_FLAGS=(--mem-fraction-static 0.5 --context-length 4096 --page-size 16 --attention-backend triton
                        --sampling-backend pytorch --grammar-backend none) ;;
  *) echo "unknown ENGINE '$ENGINE': vllm or sglang" >&2; exit 2 ;;
esac

cpu_times() {  # CPU seconds of every serving process
  ps -eo pid,times,args | grep -E "cli.main (frontend|worker)|vllm.entrypoints|EngineCore|VLLM|sglang" | grep -v grep |
    awk '{printf "%s cpu_s=%s %s %s %s\n", $1, $2, $3, $4, $5}' | cut -c1-160
}

server=""  # the running server's process group (setsid), stopped on any exit
stop_server() {
  [ -n "$server" ] || return 0
  kill -TERM -- -"$server" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 -- -"$server" 2>/dev/null || { server=""; return 0; }; sleep 1; done
  echo "server group $server still running 60 s after SIGTERM; killing it"
  kill -9 -- -"$server" 2>/dev/null || true
  sleep 2  # the GPU memory it held goes back
  server=""
}
trap stop_server EXIT

bench_one() {  # bench_one RUN SIDE
  local run=$1 side=$2 log="$LOGS/run-$1-$2.log" command started profiler=""
  case "$side" in
    dynamo) command=(python3 -m dynamo_core.cli.main serve --engine "$ENGINE" --router kv --workers 1
                     --model "$DYN_TEST_MODEL_DIR" --http-port "$PORT" "${ENGINE_FLAGS[@]}") ;;
    vllm)   command=(python3 -m vllm.entrypoints.cli.main serve "$DYN_TEST_MODEL_DIR" --served-model-name "$NAME"
                     --port "$PORT" "${ENGINE_FLAGS[@]}") ;;
    sglang) command=(python3 -m sglang.launch_server --model-path "$DYN_TEST_MODEL_DIR" --served-model-name "$NAME"
                     --host 127.0.0.1 --port "$PORT" "${ENGINE_FLAGS[@]}") ;;
    *) echo "unknown side '$side': dynamo or $ENGINE" >&2; return 2 ;;
  esac
  echo "\$ ${command[*]}" | tee "$log"
  started=$(date +%s)
  setsid "${command[@]}" >>"$log" 2>&1 &
  server=$!
  until curl -sf "http://127.0.0.1:$PORT/v1/models" | grep -q "\"$NAME\""; do
    if ! kill -0 "$server" 2>/dev/null; then echo "server exited"; tail -50 "$log"; return 1; fi
    if [ $(( $(date +%s) - started )) -ge "${START_LIMIT_S:-480}" ]; then echo "server not up in ${START_LIMIT_S:-480} s"; return 1; fi
    sleep 2
  done
  echo "run $run: $side up in $(( $(date +%s) - started )) s" | tee -a "$log"
  { echo "--- cpu before"; cpu_times; } >>"$log"
  if [ "${PROFILE:-0}" = 1 ]; then
    # Sample the serving processes' Python stacks (collapsed, CPU-active frames only) mid-run.
    (sleep 12
     for role in frontend worker; do
       pid=$(pgrep -f "dynamo_core.cli.main $role" | head -1 || true)
       [ -z "$pid" ] && [ "$role" = worker ] && pid=$(pgrep -f "vllm.entrypoints.cli.main serve|sglang.launch_server" | head -1 || true)
       [ -n "$pid" ] && py-spy record --nonblocking -r 250 -d 15 -f raw -o "$LOGS/profile-$run-$side-$role.txt" -p "$pid" >/dev/null 2>&1 &
     done
     wait) &
    profiler=$!
  fi
  python3 -m benchmarks.loadgen --url "http://127.0.0.1:$PORT" --model "$NAME" --concurrency 32 \
    --duration 30 --warmup 5 --prompt-tokens 512 --output-tokens 128 --label "$side-$run" \
    --json-out "$LOGS/bench.jsonl" 2>&1 | tee -a "$log"
  { echo "--- cpu after"; cpu_times; } >>"$log"
  [ -z "$profiler" ] || wait "$profiler"
  stop_server  # the next server needs the GPU memory this one held
}

run=0
for side in "$@"; do
  run=$((run + 1))
  bench_one "$run" "$side"
done
