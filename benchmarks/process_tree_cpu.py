"""CPU seconds (user + system) a process and its live descendants have used, from /proc:
`python -m benchmarks.process_tree_cpu PID` prints one number. How gateway_scaling.sh charges
a frontend for its CPU whatever it reports on /metrics (Dynamo's Rust frontend, or our
supervisor with its N HTTP processes)."""

from __future__ import annotations

import os
import sys

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state is field 3
    except OSError:
        return None


def tree_cpu_seconds(root: int) -> float:
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))) is not None:
            parents[int(name)] = int(fields[1])
            cpu[int(name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(cpu.get(pid, 0.0) for pid in tree)


if __name__ == "__main__":
    print(f"{tree_cpu_seconds(int(sys.argv[1])):.2f}")
