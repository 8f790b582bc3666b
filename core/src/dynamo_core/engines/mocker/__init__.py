"""The mocker: a simulated engine with a real scheduler, paged KV cache and timing model.

The request's journey: `engine.py` (async front and step loop) -> `scheduler.py` (which
sequences run this step) -> `kv_cache.py` (blocks, block tables, prefix cache, eviction) ->
`timing.py` (how long the step takes). `options.py` turns flags into a `MockerConfig`.
"""
