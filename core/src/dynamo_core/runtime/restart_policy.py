"""When `dynamo serve` restarts a worker process that exited, and when it gives up on one.

A worker that dies after it has run a while (killed, OOM, an engine crash) is restarted after
`FIRST_BACKOFF_S`. A worker that dies within `STARTUP_WINDOW_S` of its start, by an error of
its own or by a signal (kill -9 or the OOM killer while the model loads), is a quick death:
the backoff doubles with each one in a row (0.5 s, 1 s, 2 s, ... at most `MAX_BACKOFF_S`), so
a crash loop does not spin the machine, and after `GIVE_UP_AFTER` in a row the worker is
failing at start-up (a bad flag, a missing model, no GPU, too little memory): restarting it
again would only repeat the death, so it is given up on, with the reason logged. A clean exit
(code 0: the worker was told to stop and drained) is never a quick death.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

STARTUP_WINDOW_S = 15.0
GIVE_UP_AFTER = 3
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 15.0


def describe_exit(returncode: int) -> str:
    """`returncode` as asyncio gives it, in words: "exited with code 1", "was killed by SIGKILL"."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


@dataclass
class RestartPolicy:
    """One worker slot's history; `on_exit` says how long to wait before the restart, or None."""

    startup_window_s: float = STARTUP_WINDOW_S
    give_up_after: int = GIVE_UP_AFTER
    quick_deaths: int = 0  # deaths within the start-up window, in a row
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def on_start(self) -> None:
        self.started_at = time.monotonic()

    def on_exit(self, returncode: int) -> float | None:
        """`returncode` as asyncio gives it (negative: killed by that signal)."""
        lived = time.monotonic() - self.started_at
        quick_death = returncode != 0 and lived < self.startup_window_s
        self.quick_deaths = self.quick_deaths + 1 if quick_death else 0
        if self.quick_deaths >= self.give_up_after:
            return None
        self.restarts += 1
        return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** max(0, self.quick_deaths - 1))
