# Source on the GPU machine, from the repository root, after stage_wheels.sh --install:
# the carried wheels (/root/site) and the repository's packages (src/ folders plus dist-info
# for their entry points) on PYTHONPATH, ahead of the image's own packages.
REPO_ROOT=$(pwd)
python3 scripts/gpu/dist_info.py /root/dynamo-dist
export PYTHONPATH="/root/site:/root/dynamo-dist:$REPO_ROOT/core/src:$REPO_ROOT/plugins/router-kv/src:$REPO_ROOT/plugins/dynamo-vllm/src:$REPO_ROOT/plugins/nixl/src:$REPO_ROOT"
export PATH="/root/site/bin:$PATH"
export PYTHONUNBUFFERED=1
export DYN_TEST_MODEL_DIR=${DYN_TEST_MODEL_DIR:-/root/models/llama-8l-random}
# Keep NVLink multicast off (the machine's rule), also for processes vLLM starts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
make_model() {
  if [ ! -f "$DYN_TEST_MODEL_DIR/model.safetensors" ]; then
    python3 tests/gpu/random_llama.py "$DYN_TEST_MODEL_DIR"
  fi
}
