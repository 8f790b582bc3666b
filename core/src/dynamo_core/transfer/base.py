"""The KV-transfer contract: agents that expose local memory and read other processes' memory.

Disaggregated serving moves KV blocks from a prefill worker to a decode worker. Each process
creates one ``TransferAgent`` from a backend (``tcp`` in core, ``nixl`` from dynamo-nixl),
registers the buffers that hold its KV cache, and sends ``describe(region_id)`` — a
``RemoteRegion`` — to a peer inside an ordinary request-plane message. The peer then pulls the
bytes it needs with ``read`` / ``read_many`` into one of its own registered buffers. Transfers
are one-sided reads: the process that owns the data takes no part beyond keeping it registered.
"""

from __future__ import annotations

import abc
import ctypes
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec


class TransferError(Exception):
    """Any failure of a transfer: bad region or range, unreachable or vanished peer, backend error."""


class TransferConfig(msgspec.Struct, frozen=True):
    """Settings for one agent; each backend reads the ones it needs."""

    agent_name: str = ""  # unique among the agents that talk to each other; "" = generated
    host: str = "127.0.0.1"  # where the agent listens (tcp); "0.0.0.0" listens everywhere
    port: int = 0  # tcp: 0 = any free port
    timeout_s: float = 30.0  # a read not finished by then fails with TransferError


class RemoteRegion(msgspec.Struct, frozen=True):
    """What one process sends another so that it can read a registered region.

    Plain msgpack-serialisable data: it travels inside request-plane messages.
    """

    backend: str  # the backend that registered it; only an agent of the same backend can read it
    agent: str  # the owning agent's name
    metadata: bytes  # what the backend needs to reach the owner (tcp: "host:port"; nixl: agent metadata)
    region_id: int  # the owner's id for the region
    length: int  # bytes in the region
    address: int = 0  # the region's address in the owner's memory (backends that read it directly)
    memory: str = "DRAM"  # DRAM (host memory) or VRAM (GPU memory)
    device: int = 0  # GPU index for VRAM


class ReadPiece(NamedTuple):
    """One contiguous piece of a batched read (e.g. one KV block)."""

    remote_offset: int
    local_offset: int
    length: int


class TransferAgent(abc.ABC):
    """One process's endpoint for KV transfers.

    Lifecycle: ``await start()``, then ``register`` buffers and ``read`` from peers, then
    ``await close()``. All methods are called from one event loop.

    Ownership: the caller owns every registered buffer and must keep it alive, unmoved and
    unresized until it is deregistered (or the agent closed). A region that a peer has been
    told about (``describe``) must stay registered until that peer's reads of it have finished;
    reading a region that was deregistered fails, or, on backends that read memory directly,
    may return whatever the memory then holds.

    Errors: every failure (unknown region, offsets out of range, unreachable or vanished peer,
    timeout, backend fault) raises ``TransferError``. After a failed read the bytes of the
    local range it targeted are unspecified.
    """

    name: str  # the backend's name, as in TransferSpec.name

    @property
    @abc.abstractmethod
    def agent_name(self) -> str:
        """This agent's name, unique among its peers."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open listeners and backend resources. Call once, before anything else."""

    @abc.abstractmethod
    def register(self, buffer: Any) -> int:
        """Expose a writable, C-contiguous buffer (bytearray, memoryview, numpy array, mmap;
        backends may accept more, e.g. a GPU tensor) for reads by peers and as a read target.

        Returns a local region id for ``describe``, ``read``'s ``local_region`` and ``deregister``.
        """

    @abc.abstractmethod
    def describe(self, region_id: int) -> RemoteRegion:
        """What a peer needs to read region ``region_id`` (send it in a request-plane message)."""

    @abc.abstractmethod
    def deregister(self, region_id: int) -> None:
        """Stop exposing a region. Peers' later reads of it fail."""

    async def read(
        self, remote: RemoteRegion, remote_offset: int, local_region: int, local_offset: int, length: int
    ) -> None:
        """Copy ``length`` bytes at ``remote_offset`` of a peer's region into ``local_region``
        at ``local_offset``; returns when the bytes are in place."""
        await self.read_many(remote, local_region, [ReadPiece(remote_offset, local_offset, length)])

    @abc.abstractmethod
    async def read_many(self, remote: RemoteRegion, local_region: int, pieces: Sequence[tuple[int, int, int]]) -> None:
        """Copy many ``(remote_offset, local_offset, length)`` pieces of one peer region into one
        local region, as one batch (backends pipeline or merge them); returns when all are in
        place. Any failing piece fails the whole call."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop serving peers and release backend resources. Registered buffers stay the caller's."""


@dataclass(frozen=True)
class TransferSpec:
    """What the ``dynamo_transfer_backends`` hook returns for each backend."""

    name: str
    create: Callable[[TransferConfig], TransferAgent]
    description: str = ""


# ---------------------------------------------------------------------------------------------
# Helpers shared by backends
# ---------------------------------------------------------------------------------------------


def default_agent_name() -> str:
    """A name unique across hosts and restarts (NIXL keys remote agents by name)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def byte_view(buffer: Any) -> memoryview:
    """``buffer`` as a flat, writable byte view, or TransferError saying why it cannot be one."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TransferError(f"cannot register a {type(buffer).__name__}: it does not expose a buffer") from None
    if view.readonly:
        raise TransferError(f"cannot register a read-only {type(buffer).__name__}: reads write into it")
    if not view.c_contiguous:
        raise TransferError(f"cannot register a non-contiguous {type(buffer).__name__}")
    if view.nbytes == 0:
        raise TransferError("cannot register an empty buffer")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def buffer_address(view: memoryview) -> int:
    """The address of a writable byte view's first byte (for backends that pass raw pointers)."""
    return ctypes.addressof((ctypes.c_char * view.nbytes).from_buffer(view))


def check_pieces(remote: RemoteRegion, local_length: int, pieces: Sequence[tuple[int, int, int]]) -> list[ReadPiece]:
    """Validate a batch against both regions' lengths before anything moves."""
    checked = []
    for remote_offset, local_offset, length in pieces:
        if length < 0 or remote_offset < 0 or local_offset < 0:
            raise TransferError(f"negative offset or length in piece ({remote_offset}, {local_offset}, {length})")
        if remote_offset + length > remote.length:
            raise TransferError(
                f"remote range [{remote_offset}, {remote_offset + length}) is outside region "
                f"{remote.region_id} of agent '{remote.agent}' ({remote.length} bytes)"
            )
        if local_offset + length > local_length:
            raise TransferError(
                f"local range [{local_offset}, {local_offset + length}) is outside the local region ({local_length} bytes)"
            )
        checked.append(ReadPiece(remote_offset, local_offset, length))
    return checked
