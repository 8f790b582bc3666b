#!/usr/bin/env bash
# On the GPU machine, from the repository root, after stage_wheels.sh --install: one side of
# the side-by-side benchmark, on the same model, engine flags, GPU and load.
#
#   scripts/gpu/bench_vllm.sh dynamo   # dynamo serve --engine vllm --router kv (one worker)
#   scripts/gpu/bench_vllm.sh vllm     # vllm serve (vLLM's own OpenAI server)
#
# Load: benchmarks.loadgen, 32 concurrent streaming chat clients, ~512 prompt and 128 output
# tokens (ignore_eos), 5 s warm-up then 30 s measured. Results append to $OUT/bench.jsonl; the
# serving processes' CPU seconds before and after go to cpu-*.txt, and PROFILE=1 samples their
# Python stacks with py-spy (profile-*.txt, collapsed stacks).
set -euo pipefail
source scripts/gpu/dev_env.sh
SIDE=$1
LOGS=${OUT:-$PWD/gpu-out}
mkdir -p "$LOGS"
make_model
NAME=$(basename "$DYN_TEST_MODEL_DIR")
PORT=8000
# vLLM's defaults otherwise (CUDA graphs, torch.compile, prefix caching), identical on both sides.
ENGINE_FLAGS=(--gpu-memory-utilization 0.5 --max-model-len 4096)
case "$SIDE" in
  dynamo) command=(python3 -m dynamo_core.cli.main serve --engine vllm --router kv --workers 1
                   --model "$DYN_TEST_MODEL_DIR" --http-port "$PORT" "${ENGINE_FLAGS[@]}") ;;
  vllm)   command=(python3 -m vllm.entrypoints.cli.main serve "$DYN_TEST_MODEL_DIR" --served-model-name "$NAME"
                   --port "$PORT" "${ENGINE_FLAGS[@]}") ;;
  *) echo "usage: $0 dynamo|vllm" >&2; exit 2 ;;
esac
echo "\$ ${command[*]}" | tee "$LOGS/serve-$SIDE.log"
started=$(date +%s)
setsid "${command[@]}" >>"$LOGS/serve-$SIDE.log" 2>&1 &
server=$!
trap 'kill -TERM -- -$server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/v1/models" | grep -q "\"$NAME\""; do
  kill -0 $server 2>/dev/null || { echo "server exited"; tail -50 "$LOGS/serve-$SIDE.log"; exit 1; }
  [ $(( $(date +%s) - started )) -lt 480 ] || { echo "server not up in 480 s"; exit 1; }
  sleep 2
done
echo "$SIDE up in $(( $(date +%s) - started )) s"
cpu_times() {  # CPU seconds of every serving process, before and after the load
  ps -eo pid,times,args | grep -E "cli.main (frontend|worker)|vllm.entrypoints|EngineCore|VLLM" | grep -v grep |
    awk '{printf "%s cpu_s=%s %s %s %s\n", $1, $2, $3, $4, $5}' | cut -c1-160
}
cpu_times > "$LOGS/cpu-before-$SIDE.txt"
if [ "${PROFILE:-0}" = 1 ]; then
  # Sample the serving processes' Python stacks (collapsed, CPU-active frames only) mid-run.
  (sleep 12
   for role in frontend worker; do
     pid=$(pgrep -f "dynamo_core.cli.main $role" | head -1 || true)
     [ -z "$pid" ] && [ "$role" = worker ] && pid=$(pgrep -f "vllm.entrypoints.cli.main serve" | head -1 || true)
     [ -n "$pid" ] && py-spy record --nonblocking -r 250 -d 15 -f raw -o "$LOGS/profile-$SIDE-$role.txt" -p "$pid" >/dev/null 2>&1 &
   done
   wait) &
  profiler=$!
fi
python3 -m benchmarks.loadgen --url "http://127.0.0.1:$PORT" --model "$NAME" --concurrency 32 \
  --duration 30 --warmup 5 --prompt-tokens 512 --output-tokens 128 --label "$SIDE" \
  --json-out "$LOGS/bench.jsonl" 2>&1 | tee "$LOGS/bench-$SIDE.txt"
cpu_times > "$LOGS/cpu-after-$SIDE.txt"
[ -z "${profiler:-}" ] || wait "$profiler"
