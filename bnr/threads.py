"""The CPU thread count of ``runtime.num_threads: 0`` (auto): threads for the cores that are free.

Why: torch's OpenMP threads spin-wait at every parallel region's barrier. With more threads than
free cores, a descheduled thread stalls all the others; with one other busy process on a shared
2-core machine a CPU training step was measured 26x slower (0.17 s -> 4.4 s, issue 13). So a CPU
stage started next to busy processes takes one thread per *idle* core (measured over a short
window from ``/proc/stat`` on the cores this process may use), never more than its share of the
cores, and at least one. An idle machine gives the share, i.e. what the default was before.

Measured (``bench/threads.py``, bench/README.md, one run on a 2-core AMD EPYC): a CPU training
step next to one busy process took 1.76x its idle time with this policy, 2.98x with all cores,
and the idle time stayed within 2% of all cores. Caveats: the count is fixed at stage start
(load that appears later is not followed), and float sums may differ in the last bits between
thread counts, so two CPU runs under different load can differ slightly (the protocol records
``num_threads``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(idle, total) jiffies summed over ``cpus`` from /proc/stat; None when unreadable."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    idle = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle += values[3] + values[4]
        total += sum(values)
    return (idle, total) if total else None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def free_cores(window_s: float = 0.1) -> float | None:
    """How many of this process's allowed cores were idle over ``window_s`` seconds (this
    process sleeps meanwhile); None where it cannot be measured (not Linux)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return None
    before = _cpu_times(cpus)
    time.sleep(window_s)
    after = _cpu_times(cpus)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def auto_threads(share: int, free: float | None) -> int:
    """Threads for a process whose share of the cores is ``share`` when ``free`` cores are idle
    (None: unknown -> the share): the idle cores rounded, within 1..share."""
    if free is None:
        return share
    return max(1, min(share, int(free + 0.5)))
