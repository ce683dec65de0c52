"""The machine a timing was measured on, in one place: every measured table records and prints it.

>>> describe(machine_info(threads=2))                          # doctest: +SKIP
'AMD EPYC (2 cores; AVX2, no AVX-512), kernel build AVX2, 2 threads, load average 0.42 0.31 0.2'

``kernel_isa`` is the tile build the native kernel dispatches to (``native.isa()``); where the
library is not built it is derived from the CPU's flags with the kernel's own rule
(:func:`kernel_isa_for`), and ``kernel_isa_source`` says which.
"""

from __future__ import annotations

import os
import platform

from cepd_deploy.cpu import cpuinfo, usable_cores

#: the kernel's tile builds (``native.ISAS``) as a reader knows them
ISA_LABELS = {"avx512f": "AVX-512", "avx2": "AVX2", "neon": "NEON", "scalar": "generic"}
#: the CPU flags worth a line in a timing table
SIMD_FLAGS = ("avx512f", "avx512vl", "avx512bw", "avx2", "fma", "avx", "sse4_2", "sse2", "neon")


def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (from /proc/cpuinfo; empty where it says nothing)."""
    return cpuinfo()[1]


def kernel_isa_for(flags: frozenset[str]) -> str:
    """The tile build the kernel's cpuid dispatch (``kernels/ttsparse.cpp``, ``detect_isa``)
    picks on a CPU with ``flags``: avx512f+avx512vl, else avx2+fma, else neon (AArch64), else the
    generic build."""
    if {"avx512f", "avx512vl"} <= flags:
        return "avx512f"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    if "neon" in flags:
        return "neon"
    return "scalar"


def kernel_isa() -> tuple[str, str]:
    """(the tile build the native kernel uses, where that came from)."""
    try:
        from cepd_deploy import native

        if native.available():
            return native.isa(), "kernel library"
    except ImportError:
        pass
    return kernel_isa_for(cpu_flags()), "cpu flags (kernel library not built)"


def isa_label(isa: str) -> str:
    """AVX-512 / AVX2 / SSE (the generic build on x86-64) / generic."""
    if isa == "scalar" and platform.machine().lower() in ("x86_64", "amd64"):
        return "SSE (generic build)"
    return ISA_LABELS.get(isa, isa)


def machine_info(threads: int | None = None) -> dict:
    """The CPU, its SIMD flags, the kernel's tile build, the measurement's thread count and the
    load average now (call it when the measurement starts)."""
    model, flags = cpuinfo()
    isa, source = kernel_isa()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    cores = usable_cores()
    return {
        "cpu": model or platform.processor() or platform.machine() or "unknown",
        "arch": platform.machine(),
        "cores": cores,
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "kernel_isa": isa,
        "kernel_isa_label": isa_label(isa),
        "kernel_isa_source": source,
        "threads": threads,
        "load_avg": load,
    }


def _cpu_simd(simd) -> str:
    """The CPU's best vector extension, e.g. "AVX2, no AVX-512" ("" where the flags are unknown)."""
    if not simd:
        return ""
    if "avx512f" in simd:
        return "AVX-512"
    if "neon" in simd:
        return "NEON"
    return f"{'AVX2' if 'avx2' in simd else 'SSE'}, no AVX-512"


def describe(info: dict | None = None) -> str:
    """One line: CPU (cores; best SIMD), kernel build, threads, load average at start."""
    info = machine_info() if info is None else info
    inside = [f"{info['cores']} cores" if info.get("cores") else "", _cpu_simd(info.get("simd"))]
    inside = "; ".join(s for s in inside if s)
    parts = [f"{info.get('cpu', 'unknown CPU')}" + (f" ({inside})" if inside else "")]
    if info.get("kernel_isa"):
        parts.append(f"kernel build {info.get('kernel_isa_label') or isa_label(info['kernel_isa'])}")
    if info.get("threads"):
        parts.append(f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}")
    load = info.get("load_avg")
    parts.append("load average " + (" ".join(f"{v:g}" for v in load) if load else "not recorded"))
    line = ", ".join(parts)
    return f"{line} [{info['recorded']}]" if info.get("recorded") else line


def csv_columns(info: dict | None) -> dict[str, str]:
    """The machine as flat CSV cells (empty for a row with no machine, e.g. a modelled one)."""
    info = info or {}
    load = info.get("load_avg")
    return {
        "cpu": info.get("cpu", ""),
        "kernel_isa": info.get("kernel_isa", ""),
        "threads": "" if info.get("threads") is None else str(info["threads"]),
        "load_avg": " ".join(f"{v:g}" for v in load) if load else "",
    }
