"""CPU seconds of the processes whose command line matches a pattern, read from /proc.

A server's own /metrics is not enough to compare two servers: NVIDIA Dynamo's frontend does
not export `process_cpu_seconds_total`, and a frontend split over several processes exports it
once per process. So the load generator samples /proc before and after a level
(`--cpu-of REGEX`) and reports the difference, summed over every matching process (all its
threads) and their descendants (our frontend's prompt pool). A process that starts during the level counts from zero; one that exits during it
is lost (its last CPU seconds cannot be read any more), which a steady server never does.

    python -m benchmarks.proc_cpu 'dynamo frontend|dynamo\\.frontend'   # prints pid, CPU s, command
    python -m benchmarks.proc_cpu --tree PID   # CPU s of PID and its live descendants (gateway_scaling.sh)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _command_line(pid_dir: Path) -> str | None:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:  # gone, or not ours to read
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _cpu_seconds(pid_dir: Path) -> float | None:
    """utime + stime of the process (every thread), in seconds."""
    try:
        stat = (pid_dir / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # fields 14 and 15 of proc(5)


def _ancestors(proc: Path) -> set[int]:
    """This process and those above it (`uv run`, a shell): their command lines name the
    pattern, so they would match it."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = (proc / str(pid) / "stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def _parent(pid_dir: Path) -> int | None:
    try:
        stat = (pid_dir / "stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def matching_cpu(pattern: str | re.Pattern[str], proc: Path = Path("/proc")) -> dict[int, tuple[float, str]]:
    """{pid: (CPU seconds, command line)} of the live processes whose command line matches
    `pattern` (re.search) and of their descendants (a frontend's prompt-processing pool,
    whose command lines name nothing), this process and its ancestors excepted."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    mine = _ancestors(proc)
    commands: dict[int, str] = {}
    parents: dict[int, int | None] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) not in mine:
            commands[int(entry.name)] = _command_line(entry) or ""
            parents[int(entry.name)] = _parent(entry)
    chosen = _descendants({pid for pid, command in commands.items() if command and regex.search(command)}, parents)
    found: dict[int, tuple[float, str]] = {}
    for pid in chosen:
        cpu = _cpu_seconds(proc / str(pid))
        if cpu is not None:
            found[pid] = (cpu, commands[pid])
    return found


def _descendants(roots: set[int], parents: dict[int, int | None]) -> set[int]:
    chosen, grew = set(roots), True
    while grew:  # add children of chosen processes until none is left
        before = len(chosen)
        chosen |= {pid for pid, parent in parents.items() if parent in chosen}
        grew = len(chosen) > before
    return chosen


def tree_cpu_seconds(root: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds of `root` and its live descendants: how gateway_scaling.sh charges a
    frontend (our supervisor with its N HTTP processes, or Dynamo's) whatever it exports."""
    parents = {int(e.name): _parent(e) for e in proc.iterdir() if e.name.isdigit()}
    return sum(cpu for pid in _descendants({root}, parents) if (cpu := _cpu_seconds(proc / str(pid))) is not None)


def cpu_used(before: dict[int, tuple[float, str]], after: dict[int, tuple[float, str]]) -> float:
    """CPU seconds the matching processes used between two `matching_cpu` samples."""
    return sum(cpu - before.get(pid, (0.0, ""))[0] for pid, (cpu, _) in after.items())


if __name__ == "__main__":
    if sys.argv[1] == "--tree":
        print(f"{tree_cpu_seconds(int(sys.argv[2])):.2f}")
        sys.exit()
    for pid, (cpu, command) in sorted(matching_cpu(sys.argv[1]).items()):
        print(f"{pid}\t{cpu:.2f}\t{command[:120]}")
