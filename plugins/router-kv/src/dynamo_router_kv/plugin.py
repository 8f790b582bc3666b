"""Hook implementations of dynamo-router-kv (filled in by the router-kv work)."""

from dynamo_core.plugins import hookimpl


@hookimpl
def dynamo_routers() -> list:
    return []
