"""Stop strings on streamed text: cut before the first match, never emit part of one early.

The engine never sees stop strings (they are text, it produces tokens), so the postprocessor
feeds each detokenized delta through a `StopStringMatcher`. A stop string can arrive split over
several deltas ("<EN" then "D>"), so text that could be the beginning of one is held back until
the next delta shows whether it is; `flush()` releases it when the stream ends without a match.
"""

from __future__ import annotations


class StopStringMatcher:
    """Finds the earliest occurrence of any of `stop` in a stream of text pieces.

    Contract: the concatenation of every `feed` result (and `flush`, when no stop string was
    found) is the streamed text up to, not including, the earliest stop-string occurrence, or
    all of it when there is none. Once a stop string is found, `feed` returns ("", True) and
    `flush` returns "". Empty stop strings are ignored.
    """

    def __init__(self, stop: list[str]):
        self._stop = sorted({s for s in stop if s}, key=len, reverse=True)
        self._longest = len(self._stop[0]) if self._stop else 0
        self._held = ""
        self.matched: str | None = None  # the stop string found, once found

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add the next piece of text; return (the text safe to emit now, whether a stop string
        was found). On a match the text ends just before the stop string."""
        if self.matched is not None:
            return "", True
        if not self._stop:
            return text, False
        buffer = self._held + text
        # The earliest occurrence wins (longest first, so a tie goes to the longer string);
        # bounding each search by the best start so far keeps it short.
        first, matched = len(buffer), None
        for s in self._stop:
            at = buffer.find(s, 0, first + len(s) - 1)
            if at != -1 and at < first:
                first, matched = at, s
        if matched is not None:
            self._held = ""
            self.matched = matched
            return buffer[:first], True
        keep = self._partial_match_length(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def _partial_match_length(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that is a proper beginning of a stop string:
        the text that the next piece could still complete into a match."""
        for size in range(min(self._longest - 1, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0

    def flush(self) -> str:
        """At the end of the stream: the held-back text (it turned out not to be a stop string)."""
        held, self._held = self._held, ""
        return held
