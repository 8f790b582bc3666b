"""The mocker: a simulated engine with a real scheduler, paged KV cache and timing model.

The request's journey: `engine.py` (async front) -> `scheduler.py` (which requests run this
step) -> `kv_cache.py` (blocks, prefix cache, eviction) -> `timing.py` (how long the step takes).
"""
