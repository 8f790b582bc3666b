"""Prometheus metrics of the kv router, in prometheus_client's default registry (the frontend
serves it on /metrics).

Module-level singletons: created once per process on first import, shared by every router
(the frontend runs one per model) and told apart by the `model` label.

Event lag (from a worker publishing a batch to the router applying it) is not measured:
batches carry no send time, and between receipt and apply there is nothing to measure, since
the frontend hands each batch to the router as soon as it is decoded, on the same loop.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter(
    "dynamo_router_kv_decisions", "Requests routed, by chosen worker", ["model", "worker"],
)
REQUESTED_BLOCKS = Counter(
    "dynamo_router_kv_requested_blocks", "Full prompt blocks of routed requests", ["model"],
)
MATCHED_BLOCKS = Counter(
    "dynamo_router_kv_matched_blocks",
    "Prompt blocks already cached on the chosen worker (matched / requested = prefix hit rate)",
    ["model"],
)
INDEXED_BLOCKS = Gauge(
    "dynamo_router_kv_indexed_blocks", "Distinct blocks in the index (held by at least one worker)", ["model"],
)
WORKERS = Gauge("dynamo_router_kv_workers", "Workers the router tracks", ["model"])
EVENTS = Counter(
    "dynamo_router_kv_events", "KV events applied to the index, by kind (stored, removed, cleared, snapshot)",
    ["model", "kind"],
)
EVENT_GAPS = Counter(
    "dynamo_router_kv_event_gaps",
    "Lost KV events detected (event-id gap or unknown parent); each drops the worker's index until a snapshot",
    ["model"],
)
DECISION_SECONDS = Histogram(
    "dynamo_router_kv_decision_seconds", "Time to hash a prompt, match it against the index and choose a worker",
    ["model"],
    buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2),
)
