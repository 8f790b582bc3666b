# Sourced by the benchmark scripts: run `dynamo serve` for one configuration and stop it.
#   start_serve PORT WORKERS LOG [dynamo serve args...]   (env such as DYN_FILE_DISCOVERY_DIR passes through)
# starts it in the background and waits until WORKERS workers are in its /health; if it exits
# or is not up in 120 s it says so, naming LOG, stops it and returns 1.
#   stop_serve    stops it (also safe when it has already exited); put it in the EXIT trap.
#   chat_answers PORT MODEL   one 1-token chat request through a frontend (ours or Dynamo's) succeeds
#   wait_for_chat PORT MODEL SETTLE LOG   until one does (the model shows up before every worker
#                 has), then SETTLE seconds more; after 120 s says so, naming LOG, and returns 1
serve_pid=""

start_serve() {
  local port=$1 workers=$2 log=$3
  shift 3
  uv run dynamo serve "$@" --http-port "$port" > "$log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 1 240); do
    if [ "$(curl -sf "localhost:$port/health" | grep -o instance_id | wc -l)" -ge "$workers" ]; then return 0; fi
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "dynamo serve $* did not come up with $workers worker(s); see $log:" >&2
  tail -5 "$log" >&2
  stop_serve
  return 1
}

stop_serve() {
  [ -n "$serve_pid" ] || return 0
  kill -TERM "$serve_pid" 2>/dev/null || true
  wait "$serve_pid" 2>/dev/null || true
  serve_pid=""
}

chat_answers() {
  curl -sf "localhost:$1/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"model\": \"$2\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 1}" \
    > /dev/null 2>&1
}

wait_for_chat() {
  local port=$1 model=$2 settle=$3 log=$4
  for _ in $(seq 1 240); do
    if chat_answers "$port" "$model"; then sleep "$settle"; return 0; fi
    sleep 0.5
  done
  echo "the frontend on port $port did not answer a chat request in 120 s; see $log*" >&2
  return 1
}
