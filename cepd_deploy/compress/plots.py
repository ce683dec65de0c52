"""PNG figures of the analyses (written atomically)."""

from __future__ import annotations

from pathlib import Path

from cepd_deploy.compress.approx import FORMATS, SEQUENCES
from cepd_deploy.files import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    _plt().close(fig)


def plot_sequence(res: dict, path: Path) -> None:
    """Per-layer weight MSE of L+S, S(L), L(S) (log scale)."""
    plt = _plt()
    rows = res["layers"]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 2), 4))
    width = 0.8 / len(SEQUENCES)
    for k, s in enumerate(SEQUENCES):
        ax.bar([i + (k - 1) * width for i in range(len(rows))], [r[s] for r in rows], width, label=s)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=70, fontsize=7)
    ax.set_ylabel("weight MSE")
    ax.set_title(f"approximation error by operational sequence, ratio {res['ratio']:g}")
    ax.legend()
    _save(fig, path)


def plot_formats(res: dict, path: Path) -> None:
    """Mean relative weight and feature-map error of SVD/Tucker/TT against the ratio."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ratios = res["ratios"]
    for ax, key, title in zip(axes, ("weight_error", "feature_error"),
                              ("relative weight error", "relative output feature-map error")):  # fmt: skip
        for method in FORMATS:
            pts = [(r, res["mean"][str(r)][method][key]) for r in ratios if method in res["mean"][str(r)]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("compression ratio")
        ax.set_title(f"{title} (mean over layers)")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_admm_vs_direct(res: dict, path: Path) -> None:
    """Accuracy against the remaining FLOPs/params: after identical fine-tuning, and before."""
    plt = _plt()
    rows = sorted(res["rows"], key=lambda r: r["target"])
    xkey = "flops_remaining" if res["metric"] == "flops" else "params_remaining"
    xs = [100 * r[xkey] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, suffix, title in ((axes[0], "", "after identical fine-tuning"),
                              (axes[1], "_before_ft", "compact model before fine-tuning")):  # fmt: skip
        for method, color in (("ADMM", "tab:blue"), ("direct", "tab:orange")):
            ax.plot(xs, [r[method + suffix] for r in rows], marker="o", color=color, label=method)
        ax.axhline(rows[0]["baseline_accuracy"], color="gray", ls="--", label="dense baseline")
        ax.set_xlabel(f"{'FLOPs' if res['metric'] == 'flops' else 'params'} remaining (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"ADMM vs direct: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
