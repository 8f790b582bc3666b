"""Discovery: where workers register their instances and frontends watch for them.

A backend stores byte values under slash-separated keys (``namespace/component/endpoint/id``).
Every key belongs to a lease that its process keeps alive; when the process stops renewing it
(it exited, was killed, or hangs), the key disappears and watchers see a delete.

Built in:
- ``mem``: one process only (tests, and ``dynamo serve --discovery mem``, which then runs the
  workers inside the serving process).
- ``file``: one host, several processes. Each key is a file whose modification time is the
  lease's heartbeat; watchers poll the directory. A record also names its owner's pid, so a
  watcher on the same host notices a killed process at the next poll instead of after the TTL.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class WatchEventKind(str, enum.Enum):
    PUT = "put"
    DELETE = "delete"


class WatchEvent(msgspec.Struct, frozen=True):
    kind: WatchEventKind
    key: str
    value: bytes = b""


@dataclass
class DiscoveryConfig:
    """Settings shared by all backends; each backend reads the ones it needs."""

    lease_ttl_s: float = 3.0
    file_dir: str = ""  # file backend: the store's directory ("" = the per-user default)
    poll_interval_s: float = 0.25
    extra: dict[str, str] = field(default_factory=dict)  # backend-specific (e.g. endpoints)


class DiscoveryBackend(abc.ABC):
    """A key-value store with leases and watches."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` on this process's lease (replacing any old value)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` now (a clean shutdown)."""

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every live key under ``prefix`` with its value."""

    @abc.abstractmethod
    def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """Yield a PUT for every live key under ``prefix`` now, then every change after it."""

    async def close(self) -> None:
        """Stop keeping leases alive and delete this process's keys."""


@dataclass(frozen=True)
class DiscoverySpec:
    """What the ``dynamo_discovery_backends`` hook returns for each backend."""

    name: str
    create: Callable[[DiscoveryConfig], DiscoveryBackend]
    description: str = ""


def diff_events(known: dict[str, bytes], current: dict[str, bytes]) -> list[WatchEvent]:
    """The events that take a watcher from `known` to `current` (backends that re-list)."""
    events = [WatchEvent(WatchEventKind.PUT, k, v) for k, v in current.items() if known.get(k) != v]
    events += [WatchEvent(WatchEventKind.DELETE, k) for k in known.keys() - current.keys()]
    return events


# ---------------------------------------------------------------------------------------------
# mem
# ---------------------------------------------------------------------------------------------


class _MemStore:
    """The process-wide store behind every ``mem`` backend instance."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.watchers: list[tuple[str, asyncio.Queue[WatchEvent]]] = []

    def notify(self, event: WatchEvent) -> None:
        for prefix, queue in self.watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)


_MEM_STORE = _MemStore()


class MemDiscovery(DiscoveryBackend):
    def __init__(self, config: DiscoveryConfig, store: _MemStore | None = None):
        self._store = store or _MEM_STORE
        self._own: set[str] = set()

    async def put(self, key: str, value: bytes) -> None:
        self._store.values[key] = value
        self._own.add(key)
        self._store.notify(WatchEvent(WatchEventKind.PUT, key, value))

    async def delete(self, key: str) -> None:
        self._own.discard(key)
        if self._store.values.pop(key, None) is not None:
            self._store.notify(WatchEvent(WatchEventKind.DELETE, key))

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self._store.values.items() if k.startswith(prefix)}

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        entry = (prefix, queue)
        for key, value in list(self._store.values.items()):
            if key.startswith(prefix):
                queue.put_nowait(WatchEvent(WatchEventKind.PUT, key, value))
        self._store.watchers.append(entry)
        try:
            while True:
                yield await queue.get()
        finally:
            self._store.watchers.remove(entry)

    async def close(self) -> None:
        for key in list(self._own):
            await self.delete(key)


# ---------------------------------------------------------------------------------------------
# file
# ---------------------------------------------------------------------------------------------


class _FileRecord(msgspec.Struct):
    """What a key's file holds: the value and who keeps it alive."""

    value: bytes
    pid: int
    hostname: str
    ttl_s: float


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(_FileRecord)
_SUFFIX = ".rec"


def default_file_discovery_dir() -> str:
    return os.environ.get("DYN_FILE_DISCOVERY_DIR") or str(
        Path(tempfile.gettempdir()) / f"dynamo-{os.getuid()}" / "discovery"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True


class FileDiscovery(DiscoveryBackend):
    """Keys are files under a directory; an mtime older than the TTL means the lease lapsed."""

    def __init__(self, config: DiscoveryConfig):
        self._root = Path(config.file_dir or default_file_discovery_dir())
        self._root.mkdir(parents=True, exist_ok=True)
        self._ttl = config.lease_ttl_s
        self._poll = config.poll_interval_s
        self._hostname = socket.gethostname()
        self._own: dict[str, bytes] = {}
        self._heartbeat: asyncio.Task | None = None

    def _path(self, key: str) -> Path:
        if ".." in key.split("/"):
            raise ValueError(f"invalid discovery key: {key!r}")
        return self._root / (key + _SUFFIX)

    def _write(self, key: str, value: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = _FileRecord(value, os.getpid(), self._hostname, self._ttl)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(_record_encoder.encode(record))
        os.replace(tmp, path)  # atomic: readers never see half a record

    async def put(self, key: str, value: bytes) -> None:
        self._write(key, value)
        self._own[key] = value
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._keep_alive(), name="file-discovery-lease")

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            now = time.time()
            for key, value in list(self._own.items()):
                try:
                    os.utime(self._path(key), (now, now))
                except FileNotFoundError:
                    # Someone expired us (we were stalled past the TTL): register again.
                    log.warning("discovery record %s vanished; registering it again", key)
                    self._write(key, value)

    async def delete(self, key: str) -> None:
        self._own.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def _scan(self, prefix: str) -> dict[str, tuple[float, bytes]]:
        """Live keys under ``prefix`` with their file mtimes; removes lapsed ones."""
        base = self._root / prefix if prefix.endswith("/") else self._root / os.path.dirname(prefix)
        if not base.is_dir():
            return {}
        found: dict[str, tuple[float, bytes]] = {}
        now = time.time()
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if not name.endswith(_SUFFIX) or name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = str(path.relative_to(self._root))[: -len(_SUFFIX)]
                if not key.startswith(prefix):
                    continue
                try:
                    mtime = path.stat().st_mtime
                    record = _record_decoder.decode(path.read_bytes())
                except (FileNotFoundError, msgspec.DecodeError):
                    continue
                lapsed = now - mtime > record.ttl_s
                dead = record.hostname == self._hostname and not _pid_alive(record.pid)
                if lapsed or dead:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
                found[key] = (mtime, record.value)
        return found

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, (_, v) in self._scan(prefix).items()}

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        known: dict[str, bytes] = {}
        while True:
            current = {k: v for k, (_, v) in self._scan(prefix).items()}
            for event in diff_events(known, current):
                yield event
            known = current
            await asyncio.sleep(self._poll)

    async def close(self) -> None:
        if self._heartbeat is not None:
            await cancel_and_wait([self._heartbeat])
            self._heartbeat = None
        for key in list(self._own):
            await self.delete(key)


def mem_backend_spec() -> DiscoverySpec:
    return DiscoverySpec("mem", MemDiscovery, "in-process store (one process)")


def file_backend_spec() -> DiscoverySpec:
    return DiscoverySpec("file", FileDiscovery, "files under a directory (one host, several processes)")
