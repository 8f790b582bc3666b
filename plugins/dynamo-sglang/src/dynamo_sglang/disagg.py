"""Disaggregated prefill/decode through SGLang's own disaggregation, in dynamo's terms.

SGLang moves the KV itself (`--disaggregation-transfer-backend`, NIXL by default here): its
prefill side runs a bootstrap server, and one request is sent to the prefill and the decode
engine at once, both carrying the prefill side's `bootstrap_host` / `bootstrap_port` and a
`bootstrap_room` unique to the request; the decode engine fetches the KV through the room and
streams the tokens (its first one included). A prefill worker publishes where its bootstrap
server listens (`EngineInfo.disagg_bootstrap`); the frontend then sends both requests
concurrently with `KvTransferParams.engine_params = {**bootstrap, "bootstrap_room": N}`.

Pure functions over plain data: unit-tested without SGLang.
"""

from __future__ import annotations

import random
import socket
from typing import Any

from dynamo_core.errors import WorkerConfigError
from dynamo_core.protocols.engine import PreprocessedRequest

DEFAULT_TRANSFER_BACKEND = "nixl"
# SGLang derives further ports from some of its ports and refuses results over 65535; ports
# below 40000 leave room (seen on SGLang 0.5.15: `SGLANG_GRPC_PORT ... must be between 1 and 65535`).
PORT_RANGE = (20000, 40000)


def free_port(host: str = "127.0.0.1", tries: int = 64) -> int:
    """A port in PORT_RANGE that nothing listens on now (several workers share a host)."""
    for _ in range(tries):
        port = random.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind((host if host not in ("", "0.0.0.0", "::") else "", port))
            except OSError:
                continue
            return port
    raise WorkerConfigError(f"no free port in {PORT_RANGE[0]}..{PORT_RANGE[1] - 1} on {host}")


def advertised_host(host: str) -> str:
    """Where peers reach this worker's bootstrap server: a wildcard `--host` becomes this
    host's own address, as the request plane advertises it."""
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostbyname(socket.gethostname())
    return host


def role_overrides(role: str, given: set[str], host: str) -> dict[str, Any]:
    """The ServerArgs fields a prefill or decode worker needs (none for an aggregated one)."""
    if role == "agg":
        return {}
    if role not in ("prefill", "decode"):
        raise WorkerConfigError(f"--mode {role}: the sglang engine runs as agg, prefill or decode")
    overrides: dict[str, Any] = {"disaggregation_mode": role}
    if "--disaggregation-transfer-backend" not in given:
        overrides["disaggregation_transfer_backend"] = DEFAULT_TRANSFER_BACKEND
    if role == "prefill" and "--disaggregation-bootstrap-port" not in given:
        overrides["disaggregation_bootstrap_port"] = free_port(host)
    return overrides


def bootstrap_info(host: str, port: int) -> dict[str, Any]:
    """What a prefill worker publishes in its card: its bootstrap server's address."""
    return {"bootstrap_host": advertised_host(host), "bootstrap_port": int(port)}


def request_bootstrap(request: PreprocessedRequest) -> dict[str, Any]:
    """`async_generate`'s bootstrap_host/port/room for a prefill or decode request; {} for an
    aggregated one. A disaggregated request without them cannot be served by SGLang."""
    disagg = request.disagg
    if disagg is None:
        return {}
    params = (disagg.kv.engine_params if disagg.kv is not None else None) or {}
    missing = [k for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room") if params.get(k) is None]
    if missing:
        raise ValueError(f"{disagg.phase} request without SGLang's {', '.join(missing)}")
    return {
        "bootstrap_host": str(params["bootstrap_host"]),
        "bootstrap_port": int(params["bootstrap_port"]),
        "bootstrap_room": int(params["bootstrap_room"]),
    }
