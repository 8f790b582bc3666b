"""Built-in discovery backend `etcd` (many hosts; leases and watches)."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.runtime.discovery import DiscoveryBackend, DiscoveryConfig, DiscoverySpec


def _create(config: DiscoveryConfig) -> DiscoveryBackend:
    # Imported on use: the etcd client pulls in grpc, which single-host users never need.
    from dynamo_core.runtime.etcd_discovery import EtcdDiscovery

    return EtcdDiscovery(config)


@hookimpl
def dynamo_discovery_backends() -> list[DiscoverySpec]:
    return [DiscoverySpec("etcd", _create, "etcd v3 with leases (many hosts)")]
