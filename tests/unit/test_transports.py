"""Plane names a worker record or a config may carry: an unknown one is a RequestPlaneError (what
every caller of a plane handles) naming the valid values, never a bare ValueError."""

from __future__ import annotations

import pytest

from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.runtime.request_plane import RequestPlaneError
from dynamo_core.runtime.transports import TransportClients, event_plane_spec, request_plane


def _record(**planes: str) -> InstanceRecord:
    return InstanceRecord(instance_id="w1", namespace="ns", component="backend", endpoint="generate",
                          address="127.0.0.1:9", **planes)


def test_unknown_plane_names_raise_request_plane_errors_naming_the_valid_ones():
    with pytest.raises(RequestPlaneError, match=r"unknown request plane 'zmq' \(valid: tcp, nats\)"):
        request_plane("zmq")
    with pytest.raises(RequestPlaneError, match=r"unknown event plane 'kafka' \(valid: tcp, nats\)"):
        event_plane_spec("kafka")


async def test_an_embedded_event_subscription_to_a_worker_on_an_unknown_transport_is_a_request_plane_error():
    # The embedded event plane rides on the worker's request plane: its transport is looked up.
    clients = TransportClients()
    with pytest.raises(RequestPlaneError, match=r"'bogus' \(valid: tcp, nats\)"):
        async for _ in clients.events(_record(transport="bogus", event_plane="tcp")):
            pass
    with pytest.raises(RequestPlaneError, match=r"unknown event plane 'bogus' \(valid: tcp, nats\)"):
        async for _ in clients.events(_record(event_plane="bogus")):
            pass
    with pytest.raises(RequestPlaneError, match=r"unknown transport 'bogus' \(valid: tcp, nats\)"):
        async for _ in clients.call(_record(transport="bogus"), "generate", b""):
            pass
    await clients.close()
