"""Shared helpers of the benchmarks: machine description and the BENCHMARKS.md log."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """CPU model, core count and memory of this machine, in one line."""
    model = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        if found:
            model = found.group(1).strip()
    except OSError:
        pass
    memory = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    # The load average says how busy the machine was: these machines are shared and noisy.
    load = os.getloadavg()[0]
    return (
        f"{model}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}, "
        f"load average {load:.1f}"
    )


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def record(section: str, header: str, row: str) -> None:
    """Append ``row`` to the table under ``## section`` in BENCHMARKS.md (created if missing).

    Other sections are left as they are; the file is re-read right before writing because
    several benchmarks share it.
    """
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    heading = f"## {section}"
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{header}\n"
    lines = text.split("\n")
    start = lines.index(heading)
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    # Insert after the table's last row: notes written below a table stay below it.
    rows = [i for i in range(start + 1, end) if lines[i].startswith("|")]
    insert_at = rows[-1] + 1 if rows else end
    if not rows:
        while insert_at > start + 1 and not lines[insert_at - 1].strip():
            insert_at -= 1
    lines.insert(insert_at, row)
    BENCHMARKS.write_text("\n".join(lines).rstrip("\n") + "\n")


def today() -> str:
    return dt.date.today().isoformat()
