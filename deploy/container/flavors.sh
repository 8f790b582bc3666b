# Which workspace distributions each image flavor installs (sourced by the Dockerfile and by
# tests/deploy/test_container.py, which checks every flavor resolves from uv.lock).
# flavor_args FLAVOR: the `uv export` package/extra flags; flavor_paths FLAVOR: member dirs.

flavor_packages() {
  case "$1" in
    cpu)    echo "dynamo-core dynamo-router-kv" ;;
    vllm)   echo "dynamo-core dynamo-router-kv dynamo-nixl dynamo-vllm" ;;
    sglang) echo "dynamo-core dynamo-router-kv dynamo-nixl dynamo-sglang" ;;
    trtllm) echo "dynamo-core dynamo-router-kv dynamo-nixl dynamo-trtllm" ;;
    *) echo "unknown flavor '$1' (cpu, vllm, sglang, trtllm)" >&2; return 1 ;;
  esac
}

# The engine plugins' engines are extras of the plugin (dynamo-vllm[vllm], ...). TensorRT-LLM is
# not on PyPI (only stubs that fetch NVIDIA's wheel), so the trtllm flavor has no extra: the
# Dockerfile installs it from NVIDIA's index through ENGINE_PIP.
flavor_extras() {
  case "$1" in
    cpu|trtllm) echo "" ;;
    *) echo "$1" ;;
  esac
}

flavor_args() {
  local packages extra args=""
  packages=$(flavor_packages "$1") || return 1
  for p in $packages; do args="$args --package $p"; done
  extra=$(flavor_extras "$1")
  [ -n "$extra" ] && args="$args --extra $extra"
  echo "$args"
}

flavor_paths() {
  local packages paths=""
  packages=$(flavor_packages "$1") || return 1
  for p in $packages; do
    case "$p" in
      dynamo-core) paths="$paths ./core" ;;
      dynamo-nixl) paths="$paths ./plugins/nixl" ;;
      dynamo-router-kv) paths="$paths ./plugins/router-kv" ;;
      *) paths="$paths ./plugins/$p" ;;
    esac
  done
  echo "$paths"
}
