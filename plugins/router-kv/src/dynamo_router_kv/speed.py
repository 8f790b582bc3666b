"""How fast each worker has shown itself to be: the timings the cost model turns tokens into.

The cost is an estimate of time to first token, so it needs, per worker, the time a prefill
takes there. Workers do not report it, but the router sees it: every request it routes has a
known amount of prefill work ahead of it and of its own (the tokens queued on the worker and
its uncached tokens), and the router sees its first token arrive. The fit over those samples

    ttft = overhead + tokens × seconds_per_token + attention_pairs × seconds_per_attention_pair

is the worker's prefill speed, with the fixed costs (scheduling, one decode step, the network)
in the intercept. ``attention_pairs`` is the depth term: a new token at context position ``p``
attends to the ``p`` tokens before it, so ``n`` new tokens after a cached prefix of ``d`` cost
``n × (d + n / 2)`` pairs more than their count says. Without it, 40 new tokens after a
2,000-token cached prefix would be priced like 40 tokens from scratch, and the wait on the
worker holding a long shared prefix underestimated. The depth term is fitted only when the
samples vary in depth beyond what their token counts explain, and dropped (a line in tokens
alone) when the fit would call any part of the work free.

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
MIN_DEPTH_SAMPLES = 8.0  # effective samples before a fit may claim a depth term
# Spread (relative to the mean) a regressor needs before its slope is trusted.
_MIN_RELATIVE_SPREAD = 0.05


def attention_pairs(new_tokens: int, cached_tokens: int) -> float:
    """The (query, key) pairs of attention a prefill of ``new_tokens`` after ``cached_tokens``
    computes: each new token attends to every token before it (to within ``new_tokens / 2``)."""
    return new_tokens * (cached_tokens + new_tokens / 2.0)


@dataclass(frozen=True, slots=True)
class PrefillSpeed:
    """A worker's prefill time: ``overhead_s + tokens × s_per_token + pairs × s_per_pair``."""

    overhead_s: float
    s_per_token: float
    s_per_pair: float = 0.0

    def seconds(self, tokens: float, pairs: float) -> float:
        return self.overhead_s + tokens * self.s_per_token + pairs * self.s_per_pair


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


@dataclass(slots=True)
class PrefillFit:
    """Least-squares ``seconds = a + b × tokens + c × pairs`` over exponentially weighted samples.

    Kept as weighted means and centred co-moments (updated one sample at a time), not raw
    sums: ``pairs`` reach millions, and the variance of raw sums of their squares would be
    lost to rounding."""

    weight: float = 0.0
    mean_t: float = 0.0
    mean_p: float = 0.0
    mean_y: float = 0.0
    c_tt: float = 0.0
    c_pp: float = 0.0
    c_tp: float = 0.0
    c_ty: float = 0.0
    c_py: float = 0.0

    def add(self, tokens: float, pairs: float, seconds: float) -> None:
        old = self.weight * DECAY
        self.weight = old + 1.0
        dt, dp, dy = tokens - self.mean_t, pairs - self.mean_p, seconds - self.mean_y
        share = old / self.weight  # the merge factor of the old samples and the new one
        self.c_tt = self.c_tt * DECAY + share * dt * dt
        self.c_pp = self.c_pp * DECAY + share * dp * dp
        self.c_tp = self.c_tp * DECAY + share * dt * dp
        self.c_ty = self.c_ty * DECAY + share * dt * dy
        self.c_py = self.c_py * DECAY + share * dp * dy
        self.mean_t += dt / self.weight
        self.mean_p += dp / self.weight
        self.mean_y += dy / self.weight

    def speed(self) -> PrefillSpeed | None:
        """The fit with every coefficient >= 0, or None without samples.

        The depth term needs ``MIN_DEPTH_SAMPLES`` and samples whose pairs vary beyond what
        their token counts explain; without it, or when it would make the overhead or the
        per-token cost negative, the fit is a line in tokens alone. With too little spread in
        tokens for a slope (every request alike), the line goes through the origin and the mean
        point: all of the time is put on the work."""
        if self.weight <= 0 or self.mean_t <= 0:
            return None
        w = self.weight
        v_tt, v_pp, v_tp = self.c_tt / w, self.c_pp / w, self.c_tp / w
        v_ty, v_py = self.c_ty / w, self.c_py / w
        tokens_spread = v_tt > (_MIN_RELATIVE_SPREAD * self.mean_t) ** 2
        if tokens_spread and w >= MIN_DEPTH_SAMPLES and self.mean_p > 0:
            det = v_tt * v_pp - v_tp * v_tp
            # det / v_tt: the variance of pairs left once tokens explain what they can.
            if det / v_tt > (_MIN_RELATIVE_SPREAD * self.mean_p) ** 2:
                b = (v_ty * v_pp - v_py * v_tp) / det
                c = (v_py * v_tt - v_ty * v_tp) / det
                a = self.mean_y - b * self.mean_t - c * self.mean_p
                if b > 0 and c >= 0 and a >= 0:
                    return PrefillSpeed(a, b, c)
        if tokens_spread:
            b = v_ty / v_tt
            a = self.mean_y - b * self.mean_t
            if b > 0 and a >= 0:
                return PrefillSpeed(a, b)
        return PrefillSpeed(0.0, self.mean_y / self.mean_t)


class WorkerSpeeds:
    """Per-worker prefill fits and the shared decode-step fit."""

    def __init__(self, default_prefill_tokens_per_s: float = DEFAULT_PREFILL_TOKENS_PER_S) -> None:
        self._default_s_per_token = 1.0 / default_prefill_tokens_per_s
        self._prefill: dict[str, PrefillFit] = {}
        self._prefill_all = PrefillFit()
        self._decode_all = LinearFit()

    def remove_worker(self, worker_id: str) -> None:
        self._prefill.pop(worker_id, None)

    def observed_first_token(self, worker_id: str, work_tokens: int, seconds: float, *,
                             attention_pairs: float = 0.0) -> None:
        """A request with ``work_tokens`` of prefill ahead of and in it (``attention_pairs`` of
        attention among them, see `attention_pairs`) took ``seconds`` to its first token."""
        if work_tokens <= 0 or seconds < 0:
            return
        self._prefill.setdefault(worker_id, PrefillFit()).add(work_tokens, attention_pairs, seconds)
        self._prefill_all.add(work_tokens, attention_pairs, seconds)

    def observed_decode(self, batch: float, seconds_per_token: float) -> None:
        """A request decoded at ``seconds_per_token`` among ``batch`` running sequences."""
        if batch <= 0 or seconds_per_token < 0:
            return
        self._decode_all.add(batch, seconds_per_token)

    def prefill_speed(self, worker_id: str) -> PrefillSpeed:
        """The prefill speed the worker has shown (or all workers, or the default)."""
        own = self._prefill.get(worker_id)
        speed = own.speed() if own is not None and own.weight >= MIN_WORKER_SAMPLES else None
        if speed is None:
            speed = self._prefill_all.speed()
        if speed is None:
            return PrefillSpeed(0.0, self._default_s_per_token)
        s_per_token = min(max(speed.s_per_token, MIN_SECONDS_PER_TOKEN), MAX_SECONDS_PER_TOKEN)
        return PrefillSpeed(speed.overhead_s, s_per_token, speed.s_per_pair)

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
