"""KV-cache-aware routing for dynamo: the `kv` router (see `router`) and its parts.

The data flow shows in the module names: `hashing` (the prompt's chained block hashes) ->
`indexer` (which worker holds which prefix, fed by `events`, or by `approx` without events)
-> `scheduler` (cost per worker, with `load`) -> `router` (the `Router` the frontend calls).
`plugin` registers it; `metrics` holds its Prometheus series.
"""
