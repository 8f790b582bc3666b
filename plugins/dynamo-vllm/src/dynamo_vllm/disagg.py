"""Disaggregated prefill/decode through vLLM's NIXL connector, in dynamo's terms.

vLLM moves the KV itself: both roles run its `NixlConnector` (`kv_role="kv_both"`). A prefill
request carries `kv_transfer_params = {"do_remote_decode": True}`; vLLM keeps its blocks
after the one token and answers with parameters naming them (engine id, block ids, side
channel host and port). Those travel opaquely in `KvTransferParams.engine_params` to the
decode worker, whose request carries them back to vLLM; vLLM pulls the blocks over NIXL,
recomputes the last prompt token and samples the first token itself (hence
`decode_samples_first_token`). The decode side notifies the prefill side when it has read the
blocks, so `release_kv` has nothing to do; vLLM also frees unread blocks after its own timeout.

Pure functions over plain data: unit-tested without vLLM.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.protocols.engine import KvPullReport, KvTransferParams, PreprocessedRequest
from dynamo_core.errors import WorkerConfigError

CONNECTOR = "NixlConnector"
SIDE_CHANNEL_PORT_ENV = "VLLM_NIXL_SIDE_CHANNEL_PORT"
SIDE_CHANNEL_HOST_ENV = "VLLM_NIXL_SIDE_CHANNEL_HOST"


def configure_side_channel(host: str) -> tuple[str, int]:
    """Give this worker's NIXL handshake listener a free port (several workers share a host)
    and the address peers reach it at, unless the user set them. Call before vLLM starts."""
    if SIDE_CHANNEL_PORT_ENV not in os.environ:
        with socket.socket() as s:
            s.bind(("", 0))
            os.environ[SIDE_CHANNEL_PORT_ENV] = str(s.getsockname()[1])
    if SIDE_CHANNEL_HOST_ENV not in os.environ:
        # vLLM binds this address and tells decode workers to connect to it: a wildcard
        # `--host` becomes this host's own address, as the request plane advertises it.
        wildcard = host in ("", "0.0.0.0", "::")
        os.environ[SIDE_CHANNEL_HOST_ENV] = socket.gethostbyname(socket.gethostname()) if wildcard else host
    # Without NVLink, UCX reads another process's GPU memory only through an emulation over
    # TCP (0.3-0.5 GB/s on an H200) unless CUDA IPC gets are allowed (over 1 TB/s there).
    os.environ.setdefault("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "on")
    return os.environ[SIDE_CHANNEL_HOST_ENV], int(os.environ[SIDE_CHANNEL_PORT_ENV])


def transfer_config(given: Any, make: Any) -> Any:
    """The `KVTransferConfig` of a prefill or decode worker: the user's `--kv-transfer-config`
    (its NIXL backends, buffer device, extra options kept) with the connector and role this
    mode needs, or `make(...)` a fresh one. A different connector is refused: dynamo's
    orchestration speaks the NIXL connector's transfer parameters."""
    if given is None:
        return make(kv_connector=CONNECTOR, kv_role="kv_both")
    if given.kv_connector not in (None, CONNECTOR):
        raise WorkerConfigError(f"--kv-transfer-config names connector {given.kv_connector!r}; prefill and decode "
                         f"workers use {CONNECTOR} (leave kv_connector out or set it to that)")
    given.kv_connector, given.kv_role = CONNECTOR, "kv_both"
    return given


def request_transfer_params(request: PreprocessedRequest) -> dict[str, Any] | None:
    """What goes into `SamplingParams.extra_args["kv_transfer_params"]` for this request."""
    disagg = request.disagg
    if disagg is None:
        return None
    if disagg.phase == "prefill":
        return {"do_remote_decode": True}
    if disagg.phase == "decode" and disagg.kv is not None and disagg.kv.engine_params:
        return dict(disagg.kv.engine_params)
    return None


def _block_count(block_ids: Any) -> int:
    """vLLM's block ids: a list, or one list per KV-cache group."""
    if not block_ids:
        return 0
    if isinstance(block_ids[0], Sequence):
        return max(len(group) for group in block_ids)
    return len(block_ids)


def prefill_result(
    params: Mapping[str, Any] | None, *, worker_id: str, request_id: str, prompt_tokens: int, block_size: int
) -> KvTransferParams | None:
    """dynamo's transfer parameters from what vLLM answered a prefill request with."""
    if not params or not params.get("do_remote_prefill"):
        return None
    return KvTransferParams(
        worker_id=worker_id,
        hold_id=request_id,
        num_tokens=prompt_tokens,
        block_size=block_size,
        engine_params=dict(params),
        decode_samples_first_token=True,
    )


def pull_report(kv: KvTransferParams | None, bytes_per_block: int) -> KvPullReport:
    """What a decode request pulled, as far as the adapter knows: vLLM reads the blocks the
    prefill worker holds, minus any it finds in its own prefix cache (not reported), and does
    not say how long that took."""
    if kv is None or not kv.engine_params:
        return KvPullReport(recomputed="no vLLM transfer parameters from the prefill worker")
    blocks = _block_count(kv.engine_params.get("remote_block_ids"))
    return KvPullReport(blocks=blocks, bytes=blocks * bytes_per_block, seconds=None)


def kv_bytes_per_block(num_layers: int, num_kv_heads: int, head_size: int, dtype_bytes: int, block_size: int) -> int:
    """K and V of one block across all layers (one tensor-parallel rank)."""
    return 2 * num_layers * num_kv_heads * head_size * dtype_bytes * block_size
