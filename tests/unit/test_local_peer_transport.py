"""The routing peers' local transport over real loopback UDP and a real file-discovery
directory: frontends find each other through discovery, exchange PeerPlane batches, and a
stopped one leaves discovery (and so the others' send lists)."""

from __future__ import annotations

import asyncio

import pytest

from dynamo_core.protocols.routing import PeerRequest
from dynamo_core.runtime.discovery import DiscoveryConfig, FileDiscovery
from dynamo_core.runtime.peer_plane import BATCH_MESSAGES, PeerPlane
from dynamo_core.runtime.peer_transports import LocalPeerTransport, peers_prefix


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def _request(i: int) -> PeerRequest:
    return PeerRequest(frontend_id="", model="m", pool="agg", request_id=f"r{i}", worker_id="w1", state="routed",
                       prefill_tokens=100)


@pytest.mark.asyncio
async def test_two_planes_over_file_discovery_exchange_requests_and_forget_a_stopped_peer(tmp_path):
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.05)
    discoveries = [FileDiscovery(config), FileDiscovery(config)]
    received: list[list[PeerRequest]] = [[], []]
    planes = [PeerPlane(LocalPeerTransport(d, "ns"), received[i].append, lambda peer: None)
              for i, d in enumerate(discoveries)]
    for plane in planes:
        await plane.start()
    try:
        assert len(await discoveries[0].get_prefix(peers_prefix("ns"))) == 2
        await _until(lambda: all(p._transport.has_peers for p in planes))
        # More than one datagram's worth in one loop iteration: split into batches, all arrive.
        count = BATCH_MESSAGES * 2 + 5
        for i in range(count):
            planes[0].publish(_request(i))
        await _until(lambda: len(received[1]) == count)
        assert {r.frontend_id for r in received[1]} == {planes[0].frontend_id}
        assert received[0] == []  # our own messages never come back
        planes[1].publish(_request(0))
        await _until(lambda: len(received[0]) == 1)

        await planes[1].stop()
        await _until(lambda: not planes[0]._transport.has_peers)
        assert list(await discoveries[0].get_prefix(peers_prefix("ns"))) == [peers_prefix("ns") + planes[0].frontend_id]
    finally:
        for plane in planes:
            await plane.stop()
        for discovery in discoveries:
            await discovery.close()


@pytest.mark.asyncio
async def test_a_flush_sends_its_udp_batches_there_and_then_with_no_task_per_batch(tmp_path):
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.05)
    discoveries = [FileDiscovery(config), FileDiscovery(config)]
    received: list[PeerRequest] = []
    planes = [PeerPlane(LocalPeerTransport(discoveries[0], "ns"), lambda r: None, lambda peer: None),
              PeerPlane(LocalPeerTransport(discoveries[1], "ns"), received.append, lambda peer: None)]
    for plane in planes:
        await plane.start()
    try:
        await _until(lambda: all(p._transport.has_peers for p in planes))
        count = BATCH_MESSAGES * 3 + 1
        for i in range(count):
            planes[0].publish(_request(i))
        before = asyncio.all_tasks()
        planes[0]._flush()  # what the loop runs once this iteration's publishes are queued
        assert asyncio.all_tasks() - before == set()  # sendto does not block: nothing to await
        await _until(lambda: len(received) == count)
    finally:
        for plane in planes:
            await plane.stop()
        for discovery in discoveries:
            await discovery.close()
