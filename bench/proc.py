"""Process accounting read from /proc: CPU (user + system), resident memory, open sockets."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["CpuSample", "cpu", "descendants", "last_cpu", "memory_kib", "pss_kib",
           "tcp_states", "tree_cpu"]

_TICK = os.sysconf("SC_CLK_TCK")
_TCP_STATES = {"01": "established", "02": "syn_sent", "06": "time_wait", "07": "close",
               "0A": "listen", "04": "fin_wait1", "05": "fin_wait2", "08": "close_wait",
               "09": "last_ack", "0B": "closing", "03": "syn_recv"}


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds a process used so far (all its threads; waited-for children included)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.user - other.user, self.system - other.system)


def cpu(pid: int) -> CpuSample:
    """utime + cutime and stime + cstime of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        text = file.read()
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return CpuSample((utime + cutime) / _TICK, (stime + cstime) / _TICK)


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as file:
                text = file.read()
        except OSError:
            continue  # gone meanwhile
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu(pid: int) -> CpuSample:
    """CPU of `pid` and of every live process below it (hostwatch's renderer process is a
    child that is never waited for, so its time is not in the daemon's cutime)."""
    total = cpu(pid)
    for child in descendants(pid):
        try:
            total = CpuSample(total.user + cpu(child).user, total.system + cpu(child).system)
        except OSError:
            continue
    return total


def pss_kib(pid: int) -> int:
    """Proportional set size of `pid` (shared pages split among the processes mapping them)."""
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as file:
        for line in file:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def last_cpu(pid: int) -> int:
    """The CPU `pid` last ran on."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        text = file.read()
    return int(text[text.rindex(")") + 2:].split()[36])


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of `pid`, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def tcp_states() -> dict[str, int]:
    """TCP sockets of this network namespace by state (time_wait, established, ...)."""
    counts: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as file:
            next(file)
            for line in file:
                state = _TCP_STATES.get(line.split()[3], "other")
                counts[state] = counts.get(state, 0) + 1
    return counts
