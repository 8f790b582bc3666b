"""The kv router's configuration: one typed object, filled from the flags `plugin` adds."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# None: the estimated-time-to-first-token cost; a number selects the weighted block cost.
DEFAULT_OVERLAP_WEIGHT: float | None = None
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TTL_S = 120.0


@dataclass(frozen=True)
class KvRouterConfig:
    overlap_weight: float | None = DEFAULT_OVERLAP_WEIGHT  # --kv-overlap-weight
    temperature: float = DEFAULT_TEMPERATURE  # --router-temperature
    use_kv_events: bool = True  # not --no-kv-events
    ttl_s: float = DEFAULT_TTL_S  # --router-ttl (approximate mode only)

    def __post_init__(self) -> None:
        if self.overlap_weight is not None and self.overlap_weight < 0:
            raise ValueError(f"--kv-overlap-weight must be >= 0, got {self.overlap_weight}")
        if self.temperature < 0:
            raise ValueError(f"--router-temperature must be >= 0, got {self.temperature}")
        if self.ttl_s <= 0:
            raise ValueError(f"--router-ttl must be > 0, got {self.ttl_s}")

    @classmethod
    def from_options(cls, options: argparse.Namespace) -> KvRouterConfig:
        """From the router option group; a flag missing from it keeps its default."""
        return cls(
            overlap_weight=getattr(options, "kv_overlap_weight", DEFAULT_OVERLAP_WEIGHT),
            temperature=getattr(options, "router_temperature", DEFAULT_TEMPERATURE),
            use_kv_events=not getattr(options, "no_kv_events", False),
            ttl_s=getattr(options, "router_ttl", DEFAULT_TTL_S),
        )
