"""KV-cache-aware routing plugin for dynamo."""
