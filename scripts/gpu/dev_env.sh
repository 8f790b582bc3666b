# Source on the GPU machine, from the repository root, after stage_wheels.sh --install:
# the carried wheels ($SITE: /root/site for vLLM's set, SITE=/root/site-sglang for SGLang's) and
# the repository's packages (src/ folders plus dist-info for their entry points) on PYTHONPATH,
# ahead of the image's own packages.
REPO_ROOT=$(pwd)
python3 scripts/gpu/dist_info.py /root/dynamo-dist
SITE=${SITE:-/root/site}
export PYTHONPATH="$SITE:/root/dynamo-dist:$REPO_ROOT/core/src:$REPO_ROOT/plugins/router-kv/src:$REPO_ROOT/plugins/dynamo-vllm/src:$REPO_ROOT/plugins/dynamo-sglang/src:$REPO_ROOT/plugins/nixl/src:$REPO_ROOT"
export PATH="$SITE/bin:$PATH"
export PYTHONUNBUFFERED=1
export DYN_TEST_MODEL_DIR=${DYN_TEST_MODEL_DIR:-/root/models/llama-8l-random}
# Keep NVLink multicast off (the machine's rule), also for processes the engines start.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
make_model() {
  if [ ! -f "$DYN_TEST_MODEL_DIR/model.safetensors" ]; then
    python3 tests/gpu/random_llama.py "$DYN_TEST_MODEL_DIR"
  fi
}
