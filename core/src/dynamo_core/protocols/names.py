"""Wire names: the components, endpoints and worker roles that processes address each other by.

Names follow ``namespace/component/endpoint`` (``dynamo/backend/generate``). Every side of a
connection imports them from here, so a frontend or router never imports the worker (and,
through it, engines, plugins and transfer) to learn what to call.
"""

from __future__ import annotations

BACKEND_COMPONENT = "backend"  # the component every worker registers under

GENERATE_ENDPOINT = "generate"  # PreprocessedRequest in, EngineOutput deltas out
EVENTS_ENDPOINT = "events"  # subscription to a worker's KV events and load reports
KV_RELEASE_ENDPOINT = "kv_release"  # prefill workers: free the KV held under a hold id
MODEL_FILES_ENDPOINT = "model_files"  # tokenizer and template files, for frontends on other hosts

ROLES = ("agg", "prefill", "decode")  # a worker's `--mode`
# Whole (aggregated) requests go to agg and decode workers, the prefill phase of a
# disaggregated request to prefill workers, its decode phase to decode workers (they can pull
# KV; agg workers cannot).
WHOLE_REQUEST_ROLES = ("agg", "decode")
