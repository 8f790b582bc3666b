"""dynamo-core: OpenAI-compatible gateway, router and runtime for distributed LLM inference."""

__version__ = "0.1.0"
