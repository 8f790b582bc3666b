"""The statistics every benchmark reports: one percentile definition, and request summaries."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks.records import RequestRecord


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in 0..100), interpolating linearly between ranks as numpy's
    default does; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def tpot_ms(record: RequestRecord) -> float | None:
    """Milliseconds per output token after the first: (end - first token) / (tokens - 1), as
    vLLM's and SGLang's benchmarks define it; None for a request without two tokens."""
    if record.ttft is None or record.output_tokens < 2:
        return None
    return (record.e2e - record.ttft) * 1000 / (record.output_tokens - 1)


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict[str, Any]:
    """Throughput over `wall_s` and latency percentiles (ms) of the successful requests.

    ITL percentiles pool every token gap of every request, so a request weighs by its length.
    TPOT (time per output token) is one value a request, its decode time over its later tokens
    (`tpot_ms`), so each stream weighs the same and merged chunks do not skew it.
    """
    ok = [r for r in records if r.ok]
    ttft = [r.ttft * 1000 for r in ok if r.ttft is not None]
    tpot = [t for r in ok if (t := tpot_ms(r)) is not None]
    itl = [gap * 1000 for r in ok for gap in r.itl]
    e2e = [r.e2e * 1000 for r in ok]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    chunks = sum(r.content_chunks for r in ok)
    errors = Counter(r.error for r in records if not r.ok)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": wall_s,
        "req_per_s": len(ok) / wall_s if wall_s > 0 else math.nan,
        "output_tok_per_s": output_tokens / wall_s if wall_s > 0 else math.nan,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "tpot_p50_ms": percentile(tpot, 50),
        "tpot_p99_ms": percentile(tpot, 99),
        "itl_p50_ms": percentile(itl, 50),
        "itl_p99_ms": percentile(itl, 99),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p99_ms": percentile(e2e, 99),
        "mean_prompt_tokens": prompt_tokens / len(ok) if ok else math.nan,
        "mean_output_tokens": output_tokens / len(ok) if ok else math.nan,
        # Above 1, the server sends several tokens a chunk and ITL is per chunk, not per token.
        "tokens_per_chunk": output_tokens / chunks if chunks else math.nan,
        "prefix_hit_rate": sum(r.cached_tokens for r in ok) / prompt_tokens if prompt_tokens else math.nan,
        "requests_without_usage": sum(1 for r in ok if not r.usage_reported),
        "error_samples": [f"{count}x {message}" for message, count in errors.most_common(3)],
    }
