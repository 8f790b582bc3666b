"""dynamo-vllm: vLLM's v1 engine behind a dynamo worker (`dynamo serve --engine vllm`)."""

__version__ = "0.1.0"
