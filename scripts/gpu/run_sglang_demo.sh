#!/usr/bin/env bash
# On the GPU machine, from the repository root, after
#   WHL=.whl-sglang SITE=/root/site-sglang scripts/gpu/stage_wheels.sh --install:
# make the random Llama, record SGLang's real outputs as the plugin's CPU-test fixtures, run
# dynamo-sglang's unit tests against the real SGLang, then the GPU tests. One stage per call
# keeps each under the 10-minute limit:
#
#   scripts/gpu/run_sglang_demo.sh serve    # fixtures, unit tests, tests/gpu/test_sglang_serve.py
#   scripts/gpu/run_sglang_demo.sh disagg   # tests/gpu/test_sglang_disagg.py (prefill/decode over NIXL)
#   scripts/gpu/run_sglang_demo.sh all      # unit tests, then both GPU tests (FIXTURES=1 records too)
#
# Each step has its own time limit, so a hung step still leaves the logs of the others.
# Output: $OUT (the device tool returns it) or ./gpu-out: sglang_0.5.15.json (the fixtures),
# STAGE.txt (what ran, its output) and STAGE-logs.tgz (every process's log): few files, since
# the device tool brings back at most eight.
set -euo pipefail
export SITE=/root/site-sglang
source scripts/gpu/dev_env.sh
STAGE=${1:-serve}
OUT_DIR=${OUT:-$PWD/gpu-out}
LOGS=/root/logs-$STAGE
rm -rf "$LOGS" && mkdir -p "$LOGS" "$OUT_DIR"
trap 'tar -czf "$OUT_DIR/$STAGE-logs.tgz" -C "$LOGS" . || true' EXIT
exec > >(tee "$OUT_DIR/$STAGE.txt") 2>&1
set -x
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import sglang, torch, transformers; print("sglang", sglang.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
make_model
gpu_test() {  # gpu_test SECONDS FILE
  DYN_TEST_LOG_DIR="$LOGS" timeout -k 10 "$1" python3 -m pytest -p no:cacheprovider -s -v "$2" || true
}
case "$STAGE" in
  serve|all)
    python3 -m dynamo_core.cli.main plugins
    python3 -m dynamo_core.cli.main worker --engine sglang --help | grep -E -- "--(mem-fraction-static|page-size|attention-backend|disaggregation-transfer-backend|tp-size) " || true
    if [ "$STAGE" = serve ] || [ "${FIXTURES:-0}" = 1 ]; then
      timeout -k 10 240 python3 tests/gpu/record_sglang_fixtures.py "$DYN_TEST_MODEL_DIR" "$OUT_DIR/sglang_0.5.15.json" 2>&1 |
        tee "$LOGS/fixtures.log" | grep -v "^\[" || true
    fi
    timeout -k 10 120 python3 -m pytest -p no:cacheprovider -q plugins/dynamo-sglang/tests || true
    gpu_test 300 tests/gpu/test_sglang_serve.py
    [ "$STAGE" = all ] && gpu_test 240 tests/gpu/test_sglang_disagg.py ;;
  disagg)
    gpu_test 300 tests/gpu/test_sglang_disagg.py ;;
  *) echo "unknown stage '$STAGE': serve, disagg or all" >&2; exit 2 ;;
esac
