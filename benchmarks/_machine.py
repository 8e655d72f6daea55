"""The machine a benchmark ran on, for the first line of its output: figures from different
CPUs are compared by ratio only."""

from __future__ import annotations

import os
import re
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")  # what decides bf16/int8 speed


def cpu_name() -> str:
    """The CPU's model name, its cores and which of FLAGS it has."""
    info = Path("/proc/cpuinfo").read_text()
    name = re.search(r"model name\s*:\s*(.+)", info).group(1)
    flags = set(re.search(r"flags\s*:\s*(.+)", info).group(1).split())
    has = [f for f in FLAGS if f in flags]
    return f"{name}, {os.cpu_count()} cores, flags {' '.join(has)}"
