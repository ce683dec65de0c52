"""The CPU this process runs on, read once from ``/proc/cpuinfo`` (x86 ``model name``/``flags``,
Arm ``Hardware``/``Features``); used by ``doctor`` and by every measured table."""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of the first CPU; ("", {}) where the file says nothing."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64") and ("asimd" in flags or sys.platform == "darwin"):
        flags.add("neon")  # Linux calls AArch64's NEON "asimd"; every Apple arm64 CPU has it
    return model or platform.processor() or platform.machine() or "unknown", frozenset(flags)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
