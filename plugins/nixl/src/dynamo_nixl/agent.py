"""The `nixl` transfer agent: one-sided UCX reads through NIXL.

Each region is registered with NIXL's UCX backend; ``describe`` hands out the region's
address with NIXL's partial agent metadata for it (connection info plus that region's keys,
a few hundred bytes), which the reader loads once before its first read. A ``read_many`` is
one NIXL transfer request with a descriptor per piece, so UCX moves the whole batch without
Python in the loop; we only poll its state, yielding to the event loop between polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dynamo_core.transfer.base import (
    RemoteRegion,
    TransferAgent,
    TransferConfig,
    TransferError,
    buffer_address,
    byte_view,
    check_pieces,
    default_agent_name,
)

_BACKEND = "UCX"
# NIXL's UCX progress thread spins without pause (its Python wrapper fixes the delay at 0):
# one idle agent took 80% of a core, and four of them starved a 2-core host. Between polls it
# now waits on UCX's events for up to this long. Env DYN_NIXL_PROGRESS_DELAY_US; 0 spins.
_PROGRESS_DELAY_US = int(os.environ.get("DYN_NIXL_PROGRESS_DELAY_US", "100"))
# Polling: bare yields to the event loop for the first milliseconds (most KV reads are done by
# then), then 1 ms sleeps; asyncio cannot sleep less than that (epoll's timeout is in ms).
_SPIN_S = 0.002
_POLL_S = 0.001


@dataclass
class _Region:
    owner: Any  # the caller's buffer (or our view of it), kept referenced while registered
    address: int
    length: int
    memory: str  # DRAM | VRAM
    device: int
    descs: Any  # NIXL's registration list, needed to deregister
    metadata: bytes  # partial agent metadata: connection info plus this region's remote keys


def _nixl_api():
    try:
        from nixl_cu13 import _api
    except ImportError as e:
        raise TransferError(f"the nixl transfer backend needs NIXL: pip install nixl-cu13 ({e})") from e
    # NIXL logs every agent and backend creation at INFO to stdout, where our processes print
    # their own output; keep its warnings and errors unless the user asked for a level.
    if not os.environ.get("NIXL_LOG_LEVEL"):
        logging.getLogger("nixl").setLevel(logging.WARNING)
    # Large reads as true one-sided gets (CMA on one host, RDMA read across hosts). UCX's default
    # scheme was as fast or slower in every A/B run on one host (docs/benchmarks.md). UCX reads
    # it when it starts, so set it before the first agent; a user's own setting wins.
    os.environ.setdefault("UCX_RNDV_SCHEME", "get_zcopy")
    # GPU memory: UCX only reads another process's VRAM over CUDA IPC when it sees NVLink;
    # without, VRAM reads fall back to an emulation over TCP at 0.3-0.5 GB/s where CUDA IPC
    # gave 1.1-1.2 TB/s on one H200 (docs/benchmarks.md). Only where an NVIDIA driver is:
    # elsewhere UCX has no CUDA transport and warns about the unused variable.
    if os.path.exists("/dev/nvidiactl"):
        os.environ.setdefault("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "on")
    _pace_progress_thread(_api)
    return _api


def _pace_progress_thread(api: Any) -> None:
    """Make the agents created from now on use `_PROGRESS_DELAY_US` for their progress
    thread. The wrapper builds NIXL's config and sets `pthrDelay = 0` itself; a config class
    whose setter keeps our value instead is the one seam it leaves."""
    bind = api.nixlBind
    base = getattr(bind, "_dynamo_base_config", bind.nixlAgentConfig)
    if not hasattr(base, "pthrDelay"):
        return  # another NIXL build: leave its defaults alone

    class PacedConfig(base):  # type: ignore[misc, valid-type]
        @property
        def pthrDelay(self) -> int:
            return base.pthrDelay.__get__(self)

        @pthrDelay.setter
        def pthrDelay(self, value: int) -> None:
            base.pthrDelay.__set__(self, _PROGRESS_DELAY_US)

    bind._dynamo_base_config = base
    bind.nixlAgentConfig = PacedConfig


def _is_tensor(buffer: Any) -> bool:
    return type(buffer).__module__.startswith("torch") and hasattr(buffer, "data_ptr")


class NixlTransferAgent(TransferAgent):
    name = "nixl"

    def __init__(self, config: TransferConfig):
        self._config = config
        self._agent_name = config.agent_name or default_agent_name()
        self._nixl: Any = None
        self._regions: dict[int, _Region] = {}
        self._next_id = 1
        self._loaded: set[bytes] = set()  # remote metadata already given to NIXL
        self._peers: set[str] = set()

    @property
    def agent_name(self) -> str:
        return self._agent_name

    async def start(self) -> None:
        api = _nixl_api()
        try:
            agent = api.nixl_agent(self._agent_name, api.nixl_agent_config(backends=[_BACKEND]))
        except Exception as e:
            raise TransferError(f"NIXL could not create agent '{self._agent_name}': {e}") from e
        if _BACKEND not in agent.backends:
            raise TransferError(f"NIXL has no working {_BACKEND} backend here (plugins: {agent.get_plugin_list()})")
        self._nixl = agent

    def _agent(self) -> Any:
        if self._nixl is None:
            raise TransferError(f"nixl agent '{self._agent_name}' is not started (or already closed)")
        return self._nixl

    def register(self, buffer: Any) -> int:
        agent = self._agent()
        if _is_tensor(buffer):
            if not buffer.is_contiguous():
                raise TransferError("cannot register a non-contiguous tensor")
            owner, address, length = buffer, buffer.data_ptr(), buffer.numel() * buffer.element_size()
            memory, device = ("VRAM", buffer.get_device()) if buffer.is_cuda else ("DRAM", 0)
        else:
            owner = byte_view(buffer)
            address, length, memory, device = buffer_address(owner), owner.nbytes, "DRAM", 0
        try:
            descs = agent.register_memory([(address, length, device, "")], memory, backends=[_BACKEND])
            metadata = agent.get_partial_agent_metadata(descs, True, [_BACKEND])
        except Exception as e:
            raise TransferError(f"NIXL could not register {length} bytes of {memory}: {e}") from e
        region_id = self._next_id
        self._next_id += 1
        self._regions[region_id] = _Region(owner, address, length, memory, device, descs, metadata)
        return region_id

    def _local(self, region_id: int) -> _Region:
        try:
            return self._regions[region_id]
        except KeyError:
            raise TransferError(f"region {region_id} is not registered with agent '{self._agent_name}'") from None

    def describe(self, region_id: int) -> RemoteRegion:
        region = self._local(region_id)
        return RemoteRegion(
            backend=self.name, agent=self._agent_name, metadata=region.metadata, region_id=region_id,
            length=region.length, address=region.address, memory=region.memory, device=region.device,
        )

    def deregister(self, region_id: int) -> None:
        region = self._local(region_id)
        try:
            self._agent().deregister_memory(region.descs, backends=[_BACKEND])
        except Exception as e:  # still registered with NIXL: keep it ours (close deregisters it again)
            raise TransferError(f"NIXL could not deregister region {region_id}: {e}") from e
        del self._regions[region_id]

    async def read_many(self, remote: RemoteRegion, local_region: int, pieces: Sequence[tuple[int, int, int]]) -> None:
        if remote.backend != self.name:
            raise TransferError(f"region of agent '{remote.agent}' belongs to backend '{remote.backend}', not nixl")
        agent = self._agent()
        local = self._local(local_region)
        batch = [p for p in check_pieces(remote, local.length, pieces) if p.length > 0]
        if not batch:
            return
        self._load_peer(agent, remote)
        table = np.array(batch, dtype=np.uint64)  # columns: remote offset, local offset, length
        local_descs = np.empty((len(batch), 3), dtype=np.uint64)
        local_descs[:, 0] = local.address + table[:, 1]
        local_descs[:, 1] = table[:, 2]
        local_descs[:, 2] = local.device
        remote_descs = np.empty_like(local_descs)
        remote_descs[:, 0] = remote.address + table[:, 0]
        remote_descs[:, 1] = table[:, 2]
        remote_descs[:, 2] = remote.device
        try:
            handle = agent.initialize_xfer(
                "READ",
                agent.get_xfer_descs(local_descs, local.memory),
                agent.get_xfer_descs(remote_descs, remote.memory),
                remote.agent,
                backends=[_BACKEND],
            )
        except Exception as e:
            raise TransferError(f"NIXL cannot read region {remote.region_id} of agent '{remote.agent}': {e}") from e
        try:
            await self._wait(agent, handle, remote)
        finally:
            # Releasing an unfinished transfer (timeout, cancellation) asks NIXL to cancel it.
            with contextlib.suppress(Exception):
                handle.release()

    def _load_peer(self, agent: Any, remote: RemoteRegion) -> None:
        if remote.metadata in self._loaded:
            return
        try:
            agent.add_remote_agent(remote.metadata)
        except Exception as e:
            raise TransferError(f"NIXL rejected the metadata of agent '{remote.agent}': {e}") from e
        self._loaded.add(remote.metadata)
        self._peers.add(remote.agent)

    async def _wait(self, agent: Any, handle: Any, remote: RemoteRegion) -> None:
        start = time.monotonic()
        try:
            state = agent.transfer(handle)
            while state == "PROC":
                waited = time.monotonic() - start
                if waited > self._config.timeout_s:
                    raise TransferError(
                        f"read from agent '{remote.agent}' did not finish within {self._config.timeout_s} s"
                    )
                await asyncio.sleep(0 if waited < _SPIN_S else _POLL_S)
                state = agent.check_xfer_state(handle)
        except TransferError:
            raise
        except Exception as e:
            raise TransferError(f"NIXL read from agent '{remote.agent}' failed: {e}") from e
        if state != "DONE":
            raise TransferError(f"NIXL read from agent '{remote.agent}' failed (state {state}; is the peer gone?)")

    async def close(self) -> None:
        agent, self._nixl = self._nixl, None
        if agent is None:
            return
        for region in self._regions.values():
            with contextlib.suppress(Exception):
                agent.deregister_memory(region.descs, backends=[_BACKEND])
        self._regions.clear()
        for peer in self._peers:
            with contextlib.suppress(Exception):
                agent.remove_remote_agent(peer)
        self._peers.clear()
        self._loaded.clear()
