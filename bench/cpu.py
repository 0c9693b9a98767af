"""Where the CPU went during a bench run, from /proc: a process, a database's PostgreSQL
backends, the whole machine. Linux only, as the benches are."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def postgres_cpu(database: str) -> dict[str, float]:
    """CPU of the backends of one database, and of PostgreSQL's background processes
    (WAL writer, checkpointer...; shared with any other database in use)."""
    total = {"postgres": 0.0, "pg_background": 0.0}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if f" {database} " in title:
                total["postgres"] += cpu_seconds(int(entry.name))
            elif "127.0.0.1(" not in title and "[local]" not in title:
                total["pg_background"] += cpu_seconds(int(entry.name))
    return total


def machine_busy() -> float:
    """CPU seconds every process on the machine used (from /proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # minus idle and iowait
