"""How fast each worker has shown itself to be: the timings the cost model turns tokens into.

The cost is an estimate of time to first token, so it needs, per worker, the time a prefill of
``n`` tokens takes there. Workers do not report it, but the router sees it: every request it
routes has a known amount of prefill work ahead of it and of its own (tokens queued on the
worker + its uncached tokens), and the router sees its first token arrive. A straight line
``ttft = overhead + tokens × seconds_per_token`` fitted to those pairs is the worker's prefill
speed, with the fixed costs (scheduling, one decode step, the network) in the intercept.

Decode matters too: a worker running a large batch takes longer for every step, the one that
carries this request's prefill included. The router sees each request's inter-token latency
at its end (decode time / output tokens) and the batch it ran in, and fits
``step = base + seconds_per_sequence × batch`` over all workers (one engine type serves one
model, so the slope is shared; what differs per worker is its batch).

Both fits forget old samples exponentially (``DECAY`` per sample), so a worker that slows down
(thermal limits, a noisy neighbour) is seen as slower within a few dozen requests. Before a
worker has enough samples of its own, the fit over all workers stands in for it, and before
any sample at all, ``DEFAULT_PREFILL_TOKENS_PER_S``: all workers then share one speed and the
choice depends on token counts alone, which is what the speed cannot change anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFILL_TOKENS_PER_S = 10_000.0
DECAY = 0.98  # weight kept by earlier samples at each new one: ~50 samples of memory
MIN_WORKER_SAMPLES = 8.0  # effective samples before a worker's own prefill fit is used
# Slopes are clamped here: a fit through few, noisy points must not claim free prefill.
MIN_SECONDS_PER_TOKEN = 1e-7
MAX_SECONDS_PER_TOKEN = 1.0


@dataclass(slots=True)
class LinearFit:
    """Least-squares line ``y = intercept + slope × x`` over exponentially weighted samples."""

    weight: float = 0.0
    sum_x: float = 0.0
    sum_y: float = 0.0
    sum_xx: float = 0.0
    sum_xy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.weight = self.weight * DECAY + 1.0
        self.sum_x = self.sum_x * DECAY + x
        self.sum_y = self.sum_y * DECAY + y
        self.sum_xx = self.sum_xx * DECAY + x * x
        self.sum_xy = self.sum_xy * DECAY + x * y

    def line(self) -> tuple[float, float] | None:
        """(intercept, slope) with both >= 0, or None without samples.

        With too little spread in ``x`` for a slope (every request alike), the line goes
        through the origin and the mean point: all of the time is put on the work.
        """
        if self.weight <= 0 or self.sum_x <= 0:
            return None
        mean_x, mean_y = self.sum_x / self.weight, self.sum_y / self.weight
        var_x = self.sum_xx / self.weight - mean_x * mean_x
        if var_x > (0.05 * mean_x) ** 2:
            slope = (self.sum_xy / self.weight - mean_x * mean_y) / var_x
            if slope > 0:
                intercept = mean_y - slope * mean_x
                if intercept >= 0:
                    return intercept, slope
        return 0.0, mean_y / mean_x


class WorkerSpeeds:
    """Per-worker prefill fits and the shared decode-step fit."""

    def __init__(self, default_prefill_tokens_per_s: float = DEFAULT_PREFILL_TOKENS_PER_S) -> None:
        self._default_s_per_token = 1.0 / default_prefill_tokens_per_s
        self._prefill: dict[str, LinearFit] = {}
        self._prefill_all = LinearFit()
        self._decode_all = LinearFit()

    def remove_worker(self, worker_id: str) -> None:
        self._prefill.pop(worker_id, None)

    def observed_first_token(self, worker_id: str, work_tokens: int, seconds: float) -> None:
        """A request with ``work_tokens`` of prefill ahead of and in it took ``seconds``."""
        if work_tokens <= 0 or seconds < 0:
            return
        self._prefill.setdefault(worker_id, LinearFit()).add(work_tokens, seconds)
        self._prefill_all.add(work_tokens, seconds)

    def observed_decode(self, batch: float, seconds_per_token: float) -> None:
        """A request decoded at ``seconds_per_token`` among ``batch`` running sequences."""
        if batch <= 0 or seconds_per_token < 0:
            return
        self._decode_all.add(batch, seconds_per_token)

    def prefill_line(self, worker_id: str) -> tuple[float, float]:
        """(overhead seconds, seconds per token) of prefill on the worker."""
        own = self._prefill.get(worker_id)
        line = own.line() if own is not None and own.weight >= MIN_WORKER_SAMPLES else None
        if line is None:
            line = self._prefill_all.line()
        if line is None:
            return 0.0, self._default_s_per_token
        intercept, slope = line
        return intercept, min(max(slope, MIN_SECONDS_PER_TOKEN), MAX_SECONDS_PER_TOKEN)

    def decode_seconds_per_sequence(self) -> float:
        """How much one more running sequence lengthens a step; 0 before any request finished
        or while the batch size has shown no effect."""
        line = self._decode_all.line()
        if line is None:
            return 0.0
        base, per_sequence = line
        # A line through the origin (no spread in batch sizes yet) would call the whole step
        # time per-sequence cost and overprice busy workers: wait for a real slope.
        return per_sequence if base > 0 else 0.0
