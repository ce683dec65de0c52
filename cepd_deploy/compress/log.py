"""The run log (JSON lines, one record per epoch or event) and the PNG of its curves."""

from __future__ import annotations

import json
from pathlib import Path

from cepd_deploy.files import atomic_write


class RunLog:
    """Records kept in memory (they go into checkpoints) and appended to a JSON-lines file."""

    def __init__(self, path: Path | None, records: list[dict] | None = None) -> None:
        self.path = path
        self.records = list(records or [])
        if path is not None:  # a resumed run rewrites exactly the records its checkpoint holds
            text = "".join(json.dumps(r) + "\n" for r in self.records)
            atomic_write(path, lambda f: f.write(text.encode()))

    def add(self, **record) -> dict:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def plot_curves(records: list[dict], path: Path) -> None:
    """Loss, test accuracy and the ADMM residuals ||L - L^||, ||S - S^|| per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if "epoch" in r and "phase" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"baseline": "tab:gray", "admm": "tab:blue", "finetune": "tab:green"}
    for k, r in enumerate(epochs):
        r["_x"] = k + 1
    for phase, color in colors.items():
        rows = [r for r in epochs if r["phase"] == phase]
        if not rows:
            continue
        xs = [r["_x"] for r in rows]
        axes[0].plot(xs, [r["loss"] for r in rows], color=color, label=phase)
        axes[1].plot(xs, [r["test_acc"] for r in rows], color=color, label=phase)
    admm = [r for r in epochs if r["phase"] == "admm"]
    if admm:
        xs = [r["epoch"] + 1 for r in admm]
        axes[2].semilogy(xs, [max(r["res_L"], 1e-12) for r in admm], label="||L - L^||")
        axes[2].semilogy(xs, [max(r["res_S"], 1e-12) for r in admm], label="||S - S^||")
    for r in epochs:
        r.pop("_x", None)
    titles = [("training loss", "epoch (all phases)"), ("test accuracy (%)", "epoch (all phases)"),
              ("ADMM constraint residuals", "ADMM epoch")]  # fmt: skip
    for ax, (title, xlabel) in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
