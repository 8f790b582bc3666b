# Sourced by the benchmark scripts: run `dynamo serve` for one configuration and stop it.
#   start_serve PORT WORKERS LOG [dynamo serve args...]   (env such as DYN_FILE_DISCOVERY_DIR passes through)
# starts it in the background and waits until WORKERS workers are in its /health; if it exits
# or is not up in 120 s it says so, naming LOG, stops it and returns 1.
#   stop_serve    stops it (also safe when it has already exited); put it in the EXIT trap.
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
