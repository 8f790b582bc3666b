"""Stop strings on streamed text: cut before the first match, never emit part of one early.

Text that could be the beginning of a stop string is held back until the next piece shows
whether it is; at the end of the stream `flush()` releases it.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stop: list[str]):
        self._stop = [s for s in stop if s]
        self._held = ""
        self._longest = max((len(s) for s in self._stop), default=0)

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit now, whether a stop string was found)."""
        if not self._stop:
            return text, False
        buffer = self._held + text
        first = min((i for i in (buffer.find(s) for s in self._stop) if i >= 0), default=-1)
        if first >= 0:
            self._held = ""
            return buffer[:first], True
        # Hold back the longest tail that is a proper prefix of some stop string.
        keep = 0
        for size in range(min(self._longest - 1, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self._stop):
                keep = size
                break
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
