"""Child processes that never outlive their parent."""

from __future__ import annotations

import signal


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent thread ends, even by SIGKILL, so none
    is orphaned. Call it in the child (a `preexec_fn`, a pool initializer); elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
