"""CPU and memory of the benchmark's processes, read from /proc (Linux only).

CPU time (utime + stime, all threads) is the number a busy shared machine disturbs least: a rate can
halve when another job takes a core, the CPU spent per step barely moves. Every scenario reports the
daemon's, the nats-server's and the load client's CPU over its measured window.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (0.0 once it is gone: a window then reads as 'no CPU')."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_pid(parent: int, name: str) -> int | None:
    """The first child of `parent` whose command line holds `name` (the daemon's embedded nats-server)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and name.encode() in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


class CpuWindow:
    """CPU seconds of named processes between `start()` and `stop()`: {"daemon": 1.2, "nats": 0.3}."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def start(self) -> CpuWindow:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.spent = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return self.spent
