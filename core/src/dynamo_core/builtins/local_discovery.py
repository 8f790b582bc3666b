"""Built-in discovery backends `mem` (one process) and `file` (one host, several processes)."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.runtime.discovery import DiscoverySpec, file_backend_spec, mem_backend_spec


@hookimpl
def dynamo_discovery_backends() -> list[DiscoverySpec]:
    return [mem_backend_spec(), file_backend_spec()]
