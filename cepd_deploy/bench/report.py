"""The bench table as text, Markdown, CSV, JSON and a plot of speedup vs FLOPs remaining.

Every form names the machine of the measured rows (``bench.machine``) and the Eyeriss preset of
the modelled ones; paper figures appear only for the model the paper has them for.
"""

from __future__ import annotations

import csv
import io

from cepd_deploy.bench import machine as mach
from cepd_deploy.bench.harness import Row
from cepd_deploy.bench.paper import LATENCY_MS, SOURCE, display_name, has_figures
from cepd_deploy.plan.report import format_table

HEADERS = ["model", "FLOPs left", "target", "kind", "latency ms", "images/s", "speedup", "of ideal",
           "peak MB", "model MB", "paper ms", "paper speedup"]  # fmt: skip
ALIGN = "lrllrrrrrrrr"


def _mb(v: float | None) -> str:
    return f"{v:.0f}" if v is not None else "-"


def _cells(r: Row) -> list[str]:
    return [r.model, f"{r.flops_remaining:.1%}", r.target, r.kind, f"{r.latency_ms:.2f}",
            f"{r.throughput:.1f}", f"{r.speedup:.2f}x", f"{r.ideal_fraction:.0%}", _mb(r.peak_rss_mb),
            _mb(r.model_rss_mb), f"{r.paper_latency_ms:.2f}" if r.paper_latency_ms else "-",
            f"{r.paper_speedup:.2f}x" if r.paper_speedup else "-"]  # fmt: skip


def arch_of(rows: list[Row]) -> str:
    """The zoo architecture of a bench table (its rows are ``<arch>-<variant>``; one is dense)."""
    dense = next((r.model for r in rows if r.model.endswith("-dense")), None)
    return dense.removesuffix("-dense") if dense else rows[0].model.split("-")[0] if rows else ""


def machine_of(rows: list[Row]) -> dict | None:
    """The machine the measured rows ran on (None where every row is modelled)."""
    return next((r.machine for r in rows if r.kind == "measured" and r.machine), None)


def notes(rows: list[Row]) -> list[str]:
    """What a reader needs beside the table: the machine, the batch, what the memory columns are,
    the Eyeriss preset, the paper's source."""
    out = []
    if (m := machine_of(rows)) is not None:
        out.append(f"measured on: {mach.describe(m)}")
    batch = rows[0].batch if rows else 1
    if batch > 1:
        out.append(f"batch of {batch} images per run: latency is the whole batch's (paper figures are per "
                   "image at batch 1, so not shown)")  # fmt: skip
    if any(r.peak_rss_mb is not None for r in rows):
        out.append("peak MB: peak resident memory of a process running that model on that runtime "
                   "(one process each); model MB: that peak minus that process before the model "
                   "loaded")  # fmt: skip
    specs = sorted({r.details["spec"] for r in rows if r.target == "eyeriss" and r.details.get("spec")})
    if specs:
        out.append(f"eyeriss rows: the {', '.join(specs)} preset")
    if any(r.paper_latency_ms for r in rows):
        out.append(f"paper figures: {SOURCE}")
    return out


def text_table(rows: list[Row]) -> str:
    """The notes, then the table as aligned plain text."""
    return "\n".join([*notes(rows), format_table(HEADERS, [_cells(r) for r in rows], ALIGN)])


def markdown(rows: list[Row]) -> str:
    """The table as a Markdown table, the notes as sentences below it."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    extra = [n[0].upper() + n[1:] + "." for n in notes(rows)]
    return text + ("\n" + "\n\n".join(extra) + "\n" if extra else "")


def to_payload(rows: list[Row], arch: str | None = None) -> dict:
    """The JSON form: the model, the machine of the measured rows, the rows (each with its own)."""
    return {"model": arch or arch_of(rows), "machine": machine_of(rows), "rows": [r.to_json() for r in rows]}


#: CSV columns of a row's machine (empty cells for modelled rows)
MACHINE_COLUMNS = ("cpu", "kernel_isa", "threads", "load_avg")


def to_csv(rows: list[Row]) -> str:
    """The rows as CSV: a row's fields but ``details`` and ``machine``, then the machine's columns
    (``machine_*``, empty for modelled rows)."""
    buf = io.StringIO()
    keys = [k for k in rows[0].to_json() if k not in ("details", "machine")] if rows else []
    w = csv.DictWriter(buf, fieldnames=keys + [f"machine_{c}" for c in MACHINE_COLUMNS] if rows else [],
                       extrasaction="ignore")  # fmt: skip
    w.writeheader()
    for r in rows:
        cells = mach.csv_columns(r.machine)
        w.writerow(r.to_json() | {f"machine_{c}": cells[c] for c in MACHINE_COLUMNS})
    return buf.getvalue()


def paper_markers(arch: str) -> dict[str, list[tuple[float, float]]]:
    """target -> the paper's (FLOPs remaining, speedup) points for ``arch`` ({} where it has none)."""
    if not has_figures(arch):
        return {}
    return {t: sorted((f, LATENCY_MS[1.0][t] / row[t]) for f, row in LATENCY_MS.items())
            for t in ("pynq-z1", "eyeriss")}  # fmt: skip


def title(rows: list[Row], arch: str | None = None) -> str:
    """The plot's title: the model as the paper names it, per image (or the batch)."""
    batch = rows[0].batch if rows else 1
    return f"{display_name(arch or arch_of(rows))}, " + ("per image" if batch == 1 else f"batch of {batch}")


def figure(rows: list[Row], arch: str | None = None):
    """The plot as a matplotlib Figure: speedup vs FLOPs remaining per target, the ideal 1/x
    curve and the paper's points where the paper has figures for the model (``arch``, by default
    the rows'). The caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0.3 + 0.7 * k / 100 for k in range(101)]
    ax.plot(xs, [1 / x for x in xs], "k--", lw=1, label="FLOPs ideal (1/x)")
    for target in dict.fromkeys(r.target for r in rows):
        pts = sorted((r.flops_remaining, r.speedup) for r in rows if r.target == target)
        ax.plot(*zip(*pts), "o-", label=target)
    at_batch_1 = not rows or rows[0].batch == 1  # the paper's points are per image
    for target, pts in (paper_markers(arch or arch_of(rows)) if at_batch_1 else {}).items():
        marker = {"pynq-z1": "s", "eyeriss": "^"}[target]
        ax.plot(*zip(*pts), marker, mfc="none", ms=9, label=f"paper: {target}")
    ax.set_xlabel("FLOPs remaining")
    ax.set_ylabel("speedup over dense (same target)")
    ax.set_title(title(rows, arch))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if (m := machine_of(rows)) is not None:
        fig.text(0.01, 0.01, f"measured on: {mach.describe(m)}", fontsize=6, color="0.4")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
    else:
        fig.tight_layout()
    return fig


def plot(rows: list[Row], path, arch: str | None = None) -> None:
    """:func:`figure` as a PNG written to ``path`` (a path or a binary file)."""
    fig = figure(rows, arch)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=120, format="png")
    finally:
        plt.close(fig)
