"""Stop strings on streamed text: cut before the first match, never emit part of one early.

The engine never sees stop strings (they are text, it produces tokens), so the postprocessor
feeds each detokenized delta through a `StopStringMatcher`. A stop string can arrive split over
several deltas ("<EN" then "D>"), so text that could be the beginning of one is held back until
the next delta shows whether it is; `flush()` releases it when the stream ends without a match.
"""

from __future__ import annotations

from collections.abc import Sequence


def partial_match_length(text: str, markers: Sequence[str], longest: int | None = None) -> int:
    """Length of the longest end of `text` that is a proper beginning of one of `markers`: the
    text that the next piece could still complete into one, so it is held back. `longest`: the
    longest marker's length, when the caller keeps it."""
    if longest is None:
        longest = max((len(m) for m in markers), default=0)
    for size in range(min(longest - 1, len(text)), 0, -1):
        tail = text[-size:]
        if any(m.startswith(tail) for m in markers):
            return size
    return 0


class StopStringMatcher:
    """Finds the first stop string to complete in a stream of text pieces.

    Contract: the concatenation of every `feed` result (and `flush`, when no stop string was
    found) is the streamed text up to, not including, the stop string that completes first
    when the text is read character by character (of those completing at one character, the
    longest), or all of it when there is none; how the text is split into pieces does not
    matter. Once a stop string is found, `feed` returns ("", True) and `flush` returns "".
    Empty stop strings are ignored.
    """

    def __init__(self, stop: list[str]):
        self._stop = [s for s in dict.fromkeys(stop) if s]
        self._longest = max((len(s) for s in self._stop), default=0)
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
        # The stop string that is complete first, reading character by character, is the
        # one the engine would have stopped at: the occurrence that ends first (of those ending
        # together, the longest). So the result does not depend on how the text was split.
        best: tuple[int, int, str] | None = None  # (end, start, stop string)
        for s in self._stop:
            at = buffer.find(s)
            if at != -1 and (best is None or (at + len(s), at) < best[:2]):
                best = (at + len(s), at, s)
        if best is not None:
            self._held = ""
            self.matched = best[2]
            return buffer[: best[1]], True
        keep = partial_match_length(buffer, self._stop, self._longest)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """At the end of the stream: the held-back text (it turned out not to be a stop string)."""
        held, self._held = self._held, ""
        return held
