"""The `etcd` discovery backend: many hosts, leases kept alive by the owning process.

Every key a process puts is attached to its one lease (TTL `--lease-ttl`); a keep-alive task
refreshes it every third of the TTL. If etcd restarts or the connection drops, the process
reconnects, takes a new lease and puts its keys again; watchers re-list and report what changed
while they were cut off, then watch again. Endpoints come from `--etcd-endpoints` or
`ETCD_ENDPOINTS` (comma-separated `http://host:port`; the first reachable one is used).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import aetcd

from dynamo_core.runtime.discovery import DiscoveryBackend, DiscoveryConfig, WatchEvent, WatchEventKind, diff_events
from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
RECONNECT_DELAY_S = 0.5
# aetcd surfaces connection trouble as its own exceptions and grpc's; any of these means "retry".
_RETRYABLE = (aetcd.exceptions.ClientError, ConnectionError, OSError, asyncio.TimeoutError)


def etcd_endpoints(config: DiscoveryConfig) -> list[tuple[str, int]]:
    raw = config.extra.get("etcd_endpoints") or os.environ.get("ETCD_ENDPOINTS") or DEFAULT_ENDPOINT
    endpoints = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        parsed = urlparse(item if "://" in item else f"http://{item}")
        endpoints.append((parsed.hostname or "127.0.0.1", parsed.port or 2379))
    return endpoints


class EtcdDiscovery(DiscoveryBackend):
    def __init__(self, config: DiscoveryConfig):
        self._endpoints = etcd_endpoints(config)
        self._ttl = max(1, round(config.lease_ttl_s))
        self._client: aetcd.Client | None = None
        self._lease = None
        self._own: dict[str, bytes] = {}
        self._keepalive: asyncio.Task | None = None
        self._connect_lock = asyncio.Lock()

    async def _connect(self) -> aetcd.Client:
        async with self._connect_lock:
            if self._client is not None:
                return self._client
            errors = []
            for host, port in self._endpoints:
                client = aetcd.Client(host=host, port=port, timeout=5)
                try:
                    await client.status()
                except _RETRYABLE as exc:
                    errors.append(f"{host}:{port}: {exc}")
                    with contextlib.suppress(Exception):
                        await client.close()
                    continue
                self._client = client
                return client
            raise ConnectionError("no etcd endpoint reachable: " + "; ".join(errors))

    async def server_status(self):
        """etcd's status answer (version, leader, ...) from the first reachable endpoint."""
        return await (await self._connect()).status()

    async def _reset(self) -> None:
        client, self._client, self._lease = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _ensure_lease(self):
        client = await self._connect()
        if self._lease is None:
            self._lease = await client.lease(self._ttl)
            for key, value in list(self._own.items()):  # after a reconnect: register everything again
                await client.put(key.encode(), value, lease=self._lease)
        return client, self._lease

    async def put(self, key: str, value: bytes) -> None:
        self._own[key] = value
        client, lease = await self._ensure_lease()
        await client.put(key.encode(), value, lease=lease)
        if self._keepalive is None:
            self._keepalive = asyncio.create_task(self._keep_alive(), name="etcd-lease")

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                client, lease = await self._ensure_lease()
                response = await lease.refresh()
                if getattr(response, "TTL", 1) <= 0:  # the lease expired while we were away
                    log.warning("etcd lease expired; registering again")
                    self._lease = None
                    await self._ensure_lease()
            except _RETRYABLE as exc:
                log.warning("etcd unreachable (%s); reconnecting", exc)
                await self._reset()

    async def delete(self, key: str) -> None:
        self._own.pop(key, None)
        with contextlib.suppress(*_RETRYABLE):
            client = await self._connect()
            await client.delete(key.encode())

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        client = await self._connect()
        try:
            return {kv.key.decode(): kv.value for kv in await client.get_prefix(prefix.encode())}
        except _RETRYABLE:
            await self._reset()  # the next call reconnects
            raise

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        known: dict[str, bytes] = {}
        while True:
            try:
                client = await self._connect()
                # Watch first, then list: a change between the two shows up in the watch,
                # and the de-duplication below drops what the listing already reported.
                watch = await client.watch_prefix(prefix.encode())
                try:
                    current = {kv.key.decode(): kv.value for kv in await client.get_prefix(prefix.encode())}
                    for event in diff_events(known, current):
                        yield event
                    known = current
                    async for event in watch:
                        key = event.kv.key.decode()
                        if event.kind == aetcd.EventKind.PUT:
                            if known.get(key) != event.kv.value:
                                known[key] = event.kv.value
                                yield WatchEvent(WatchEventKind.PUT, key, event.kv.value)
                        elif known.pop(key, None) is not None:
                            yield WatchEvent(WatchEventKind.DELETE, key)
                finally:
                    with contextlib.suppress(Exception):
                        await watch.cancel()
            except _RETRYABLE as exc:
                log.warning("etcd watch on %s interrupted (%s); resuming", prefix, exc)
                await self._reset()
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def close(self) -> None:
        if self._keepalive is not None:
            await cancel_and_wait([self._keepalive])
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.revoke()  # our keys go with it, at once
        self._own.clear()
        await self._reset()
