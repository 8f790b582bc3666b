"""A frontend's model registry in the test's own process, watching real discovery: for tests
that drive the frontend's serving path (engine client, disaggregation) without HTTP."""

from __future__ import annotations

import argparse

from dynamo_core.frontend.model_registry import ModelRegistry
from dynamo_core.plugins import get_registry
from dynamo_core.runtime.discovery import DiscoveryBackend, DiscoveryConfig
from dynamo_core.runtime.transports import TransportClients


async def start_frontend_registry(
    config: DiscoveryConfig, router: str = "round-robin"
) -> tuple[ModelRegistry, TransportClients, DiscoveryBackend]:
    """A started registry over file discovery in `config`, the transports it calls workers
    with and its discovery backend; the caller stops the registry and closes the other two."""
    clients = TransportClients(None)
    discovery = get_registry().get("discovery", "file").create(config)
    registry = ModelRegistry(discovery, clients, "dynamo", get_registry().get("router", router).create,
                             argparse.Namespace())
    await registry.start()
    return registry, clients, discovery
