"""Routing policies. Built in: round-robin, random, least-loaded; `kv` is a plugin."""
