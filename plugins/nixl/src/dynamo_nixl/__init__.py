"""NIXL KV-transfer backend for dynamo."""
