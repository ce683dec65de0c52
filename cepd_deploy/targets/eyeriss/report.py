"""The simulator's results as a plain-text table and as a plot (energy by level, latency per op)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from cepd_deploy.files import atomic_write
from cepd_deploy.plan.report import format_table
from cepd_deploy.targets.eyeriss.result import ENERGY_LEVELS, SimResult


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def table(result: SimResult) -> str:
    """One row per Plan op, then the totals line."""
    headers = ["op", "kind", "MACs", "PEs", "util", "cycles", "ms", "DRAM KB", "GLB", "energy"]
    rows = [[r.name, r.kind, _si(r.macs), r.active_pes, f"{r.utilisation:.0%}", _si(r.cycles),
             f"{r.latency_ms:.3f}", f"{r.dram_bytes / 1e3:.1f}", _si(r.accesses["glb"]), _si(r.energy)]
            for r in result.layers]  # fmt: skip
    t = result.totals
    total = t["energy"] or 1.0
    share = ", ".join(f"{k} {t['energy_by_level'][k] / total:.0%}" for k in ENERGY_LEVELS)
    spec = result.spec
    foot = (
        f"{spec.name}: {spec.array.rows}x{spec.array.cols} PEs at {spec.clock_mhz:g} MHz, "
        f"batch {result.batch}, objective {result.objective}\n"
        f"total: {t['latency_ms']:.2f} ms ({t['latency_ms_per_image']:.2f} ms/image; processing "
        f"{t['processing_ms']:.2f} ms), {_si(t['macs'])} MACs, utilisation {t['utilisation']:.0%}, "
        f"DRAM {t['dram_bytes'] / 1e6:.2f} MB, energy {_si(t['energy'])} MAC-units ({share})"
    )
    return format_table(headers, rows, "llrrrrrrrr") + "\n" + foot


def draw(result: SimResult, f: BinaryIO, fmt: str = "png") -> None:
    """Energy by memory level (stacked) and latency per op, as a ``fmt`` image written to ``f``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.layers
    x = range(len(rows))
    fig, (ax_e, ax_t) = plt.subplots(2, 1, figsize=(max(8, 0.12 * len(rows) + 4), 7), sharex=True)
    try:
        bottom = [0.0] * len(rows)
        for level in ENERGY_LEVELS:
            vals = [r.energy_by_level[level] for r in rows]
            ax_e.bar(x, vals, bottom=bottom, label=level, width=0.8)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax_e.set_ylabel("energy (MAC = 1)")
        ax_e.legend(ncol=len(ENERGY_LEVELS), fontsize="small")
        t = result.totals
        ax_e.set_title(f"{result.spec.name}, batch {result.batch}: {t['latency_ms']:.1f} ms, "
                       f"energy {t['energy']:.3g}")  # fmt: skip
        ax_t.bar(x, [r.latency_ms for r in rows], width=0.8, color="tab:gray")
        ax_t.set_ylabel("latency (ms)")
        ax_t.set_xticks(list(x))
        ax_t.set_xticklabels([r.name for r in rows], rotation=90, fontsize=6 if len(rows) > 40 else 8)
        fig.tight_layout()
        fig.savefig(f, format=fmt, dpi=120)
    finally:
        plt.close(fig)


def plot(result: SimResult, path: str | Path) -> Path:
    """:func:`draw` into ``path`` atomically, in the format its suffix names (PNG without one)."""
    path = Path(path)
    return atomic_write(path, lambda f: draw(result, f, path.suffix[1:] or "png"))
