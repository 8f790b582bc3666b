"""Reading a server's Prometheus page (and this process's own CPU) around a measured level."""

from __future__ import annotations

import re
import resource


def gc_collections(text: str) -> list[float] | None:
    """Garbage collections per generation (0, 1, 2) in Prometheus text format, or None."""
    found = {
        int(g): float(n)
        for g, n in re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', text, re.M)
    }
    return [found[g] for g in range(3)] if len(found) >= 3 else None


def prometheus_value(text: str, name: str) -> float | None:
    """The value of the unlabelled sample `name` in Prometheus text format, or None."""
    prefix = name + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[1])
    return None


def process_cpu_seconds() -> float:
    """User + system CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
