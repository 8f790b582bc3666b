"""dynamo-trtllm: TensorRT-LLM's LLM API behind a dynamo worker (`dynamo serve --engine trtllm`).

A request's way through the plugin, module by module: `options` (the LLM arguments a worker
starts TensorRT-LLM with) -> `sampling` (our request as `SamplingParams`) -> `engine`
(`generate_async` streaming) -> `outputs` (cumulative outputs as deltas); beside it `kv_events`
(TensorRT-LLM's KV cache events as ours), `load` (its iteration stats as load metrics) and
`disagg` (`DisaggregatedParams` between prefill and decode workers).
"""

__version__ = "0.1.0"
