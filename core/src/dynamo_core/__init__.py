"""dynamo-core: OpenAI-compatible gateway, router and runtime for distributed LLM inference."""

__version__ = "0.1.0"

from dynamo_core.hookspecs import hookimpl  # noqa: E402  (the marker plugin authors import)

__all__ = ["__version__", "hookimpl"]
