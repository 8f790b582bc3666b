"""The frontend's Prometheus metrics (served on /metrics with those of the plugins)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "dynamo_frontend_requests", "HTTP requests by model, endpoint and outcome", ["model", "endpoint", "status"]
)
# multiprocess_mode: how `--http-workers N` sums a gauge over its processes (frontend/http_processes.py).
INFLIGHT = Gauge("dynamo_frontend_inflight_requests", "Requests being served", ["model"], multiprocess_mode="livesum")
TTFT = Histogram(
    "dynamo_frontend_time_to_first_token_seconds", "Time from request to first output text", ["model"],
    buckets=_LATENCY_BUCKETS,
)
ITL = Histogram(
    "dynamo_frontend_inter_token_latency_seconds", "Time between streamed output deltas, per token", ["model"],
    buckets=_LATENCY_BUCKETS,
)
DURATION = Histogram(
    "dynamo_frontend_request_duration_seconds", "Time from request to its last output", ["model"],
    buckets=_LATENCY_BUCKETS,
)
INPUT_TOKENS = Counter("dynamo_frontend_input_tokens", "Prompt tokens processed", ["model"])
CACHED_TOKENS = Counter("dynamo_frontend_cached_tokens", "Prompt tokens the engines found cached", ["model"])
OUTPUT_TOKENS = Counter("dynamo_frontend_output_tokens", "Completion tokens generated", ["model"])
REROUTES = Counter(
    "dynamo_frontend_reroutes",
    "Requests routed to another worker because theirs lost its connection before answering "
    "(reason=connection_lost), sent nothing within --stall-timeout (reason=stalled) or declined them "
    "while draining (reason=declined); rendezvous splits tried again with a fresh room because the "
    "prefill failed (reason=prefill_failed) or the decode worker could not get the KV (reason=decode_kv_failed)",
    ["model", "reason"],
)
MIGRATIONS = Counter(
    "dynamo_frontend_migrations",
    "Requests that continued on another worker after theirs failed mid-stream: its connection was lost "
    "(reason=connection_lost), it sent nothing within --stall-timeout (reason=stalled) or its drain "
    "timed out (reason=draining)",
    ["model", "reason"],
)
# livemostrecent: only the process answering /metrics refreshes it, so the others' older values
# must not win (livemax kept a departed worker counted).
WORKERS = Gauge("dynamo_frontend_workers", "Live worker instances per model", ["model"],
                multiprocess_mode="livemostrecent")

# Disaggregated serving (models with prefill and decode workers).
DISAGG_REQUESTS = Counter(
    "dynamo_frontend_disagg_requests", "Requests served disaggregated: prefilled on one worker, decoded on another", ["model"]
)
DISAGG_FALLBACKS = Counter(
    "dynamo_frontend_disagg_fallbacks",
    "Requests of a model with decode workers served without a KV transfer, by reason "
    "(short_prompt, single_token, no_prefill_worker, prefill_failed, structured_output, decode_recomputed, "
    "decode_kv_failed)",
    ["model", "reason"],
)
DISAGG_PREFILL_ERRORS = Counter(
    "dynamo_frontend_disagg_prefill_errors",
    "Prefill sides of rendezvous handoffs (sent with the decode side at once) that failed", ["model"],
)
KV_TRANSFER_BYTES = Counter(
    "dynamo_frontend_kv_transfer_bytes", "KV bytes decode workers pulled from prefill workers", ["model"]
)
KV_TRANSFER_BLOCKS = Counter(
    "dynamo_frontend_kv_transfer_blocks", "KV blocks decode workers pulled from prefill workers", ["model"]
)
KV_TRANSFER_SECONDS = Histogram(
    "dynamo_frontend_kv_transfer_seconds", "Time a decode worker took to pull one request's KV", ["model"],
    buckets=_LATENCY_BUCKETS,
)
