"""The `echo` engine: streams back the tokens of the prompt's last message.

It exists to test the gateway's postprocessing end to end (detokenization, stop strings,
max_tokens, usage): whatever text the last message holds is what the "model" says.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from dynamo_core.engines.base import Engine, EngineContext
from dynamo_core.hookspecs import OptionGroup
from dynamo_core.protocols.engine import EngineInfo, EngineOutput, FinishReason, PreprocessedRequest, TokenLogprob
from dynamo_core.protocols.kv_events import LoadMetrics

DEFAULT_CONTEXT_LENGTH = 32768


def add_echo_options(group: OptionGroup) -> None:
    group.add_argument(
        "--echo-delay-ms", type=float, default=0.0, metavar="MS",
        help="pause between streamed tokens (default: %(default)s)",
    )
    group.add_argument(
        "--context-length", type=int, default=None,
        help="context length to report (default: the model's config.json, else 32768)",
    )


def context_length_from_model(model_path: str | None, override: int | None) -> int:
    """`--context-length`, else the model's `max_position_embeddings`, else the default."""
    if override:
        return override
    if model_path:
        config = Path(model_path) / "config.json"
        if config.is_file():
            value = json.loads(config.read_text()).get("max_position_embeddings")
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_CONTEXT_LENGTH


class EchoEngine(Engine):
    wants_last_message_tokens = True

    def __init__(self, delay_s: float, context_length: int):
        self._delay_s = delay_s
        self._context_length = context_length
        self._running = 0

    @classmethod
    def from_context(cls, context: EngineContext) -> "EchoEngine":
        options = context.options
        delay_ms = getattr(options, "echo_delay_ms", 0.0) or 0.0
        if delay_ms < 0:
            raise ValueError("--echo-delay-ms must be >= 0")
        return cls(delay_ms / 1000.0, context_length_from_model(context.model_path, getattr(options, "context_length", None)))

    async def start(self) -> EngineInfo:
        return EngineInfo(block_size=16, kv_capacity_blocks=0, context_length=self._context_length)

    async def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        source = request.last_message_token_ids
        if source is None:
            source = request.token_ids
        limit = request.stop.max_tokens
        tokens = source[:limit]
        # Echoed tokens are certain: logprob 0, and the token itself as its only alternative.
        top = request.output.logprobs
        self._running += 1
        try:
            first = True
            for token in tokens:
                if self._delay_s:
                    await asyncio.sleep(self._delay_s)
                yield EngineOutput(
                    token_ids=[token],
                    logprobs=[0.0] if top is not None else None,
                    top_logprobs=[[TokenLogprob(token, 0.0)]] if top else None,
                    prompt_tokens=len(request.token_ids) if first else None,
                    cached_tokens=0 if first else None,
                )
                first = False
            finish = FinishReason.LENGTH if len(source) > limit else FinishReason.STOP
            yield EngineOutput(
                finish_reason=finish,
                prompt_tokens=len(request.token_ids) if first else None,
                cached_tokens=0 if first else None,
            )
        finally:
            self._running -= 1

    def load_metrics(self, worker_id: str) -> LoadMetrics:
        return LoadMetrics(
            worker_id=worker_id, running_requests=self._running, waiting_requests=0,
            active_kv_blocks=0, total_kv_blocks=0,
        )
