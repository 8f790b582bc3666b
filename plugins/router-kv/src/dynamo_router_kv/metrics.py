"""Prometheus metrics of the kv router (served on the frontend's /metrics), labelled by model."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("dynamo_router_kv_decisions", "Requests routed, by chosen worker", ["model", "worker"])
REQUESTED_BLOCKS = Counter("dynamo_router_kv_requested_blocks", "Full prompt blocks of routed requests", ["model"])
MATCHED_BLOCKS = Counter(
    "dynamo_router_kv_matched_blocks",
    "Prompt blocks already cached on the chosen worker (matched/requested = prefix hit rate)",
    ["model"],
)
INDEXED_BLOCKS = Gauge("dynamo_router_kv_indexed_blocks", "Distinct blocks in the index", ["model"])
WORKERS = Gauge("dynamo_router_kv_workers", "Workers the router tracks", ["model"])
EVENT_GAPS = Counter("dynamo_router_kv_event_gaps", "Lost KV event batches detected (worker resynchronised)", ["model"])
EVENTS_APPLIED = Counter("dynamo_router_kv_events_applied", "KV events applied to the index", ["model", "kind"])
DECISION_SECONDS = Histogram(
    "dynamo_router_kv_decision_seconds", "Time to hash a prompt, match it and pick a worker", ["model"],
    buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2),
)
