"""The bench table as text, Markdown, CSV, JSON and a plot of speedup vs FLOPs remaining."""

from __future__ import annotations

import csv
import io

from cepd_deploy.bench.harness import Row
from cepd_deploy.bench.paper import LATENCY_MS, SOURCE
from cepd_deploy.plan.report import format_table

HEADERS = ["model", "FLOPs left", "target", "kind", "latency ms", "speedup", "of ideal",
           "paper ms", "paper speedup"]  # fmt: skip


def _cells(r: Row) -> list[str]:
    return [r.model, f"{r.flops_remaining:.1%}", r.target, r.kind, f"{r.latency_ms:.2f}",
            f"{r.speedup:.2f}x", f"{r.ideal_fraction:.0%}",
            f"{r.paper_latency_ms:.2f}" if r.paper_latency_ms else "-",
            f"{r.paper_speedup:.2f}x" if r.paper_speedup else "-"]  # fmt: skip


def text_table(rows: list[Row]) -> str:
    return format_table(HEADERS, [_cells(r) for r in rows], "lrllrrrrr")


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + f"\n\nPaper figures: {SOURCE}.\n"


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    keys = [k for k in rows[0].to_json() if k != "details"] if rows else []
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r.to_json())
    return buf.getvalue()


def plot(rows: list[Row], path) -> None:
    """Speedup vs FLOPs remaining per target, the ideal 1/x curve and the paper's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0.3 + 0.7 * k / 100 for k in range(101)]
    ax.plot(xs, [1 / x for x in xs], "k--", lw=1, label="FLOPs ideal (1/x)")
    for target in dict.fromkeys(r.target for r in rows):
        pts = sorted((r.flops_remaining, r.speedup) for r in rows if r.target == target)
        ax.plot(*zip(*pts), "o-", label=target)
    for target, marker in (("pynq-z1", "s"), ("eyeriss", "^")):
        pts = [(f, LATENCY_MS[1.0][target] / row[target]) for f, row in LATENCY_MS.items()]
        ax.plot(*zip(*sorted(pts)), marker, mfc="none", ms=9, label=f"paper: {target}")
    ax.set_xlabel("FLOPs remaining")
    ax.set_ylabel("speedup over dense (same target)")
    ax.set_title("ResNet-50, per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
