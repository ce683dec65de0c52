"""The paper's analyses: approximation error by operational sequence (Tables 5-7), SVD vs
Tucker vs TT at equal compression (Tables 8-9), and ADMM vs the direct method (Figure 6).

>>> res = sequence(model, (1, 3, 32, 32), ratio=3.0)        # doctest: +SKIP
>>> res["layers"][0]["L+S"], res["wins"]                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.compress.approx import FORMATS, SEQUENCES, format_approx, mse, sequence_ranks, sequences
from cepd_deploy.compress.data import batches, load_data
from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.lower import lower
from cepd_deploy.model.layers import CEPDConv2d


def conv_layers(model: nn.Module, shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """The convs ``convert`` would compress, in execution order: ungrouped, not the first."""
    plan = lower(model.eval(), shape)
    out = {}
    names = [n for n, info in plan.layers.items() if info.kind in ("conv", "cepd")]
    for k, name in enumerate(names):
        m = model.get_submodule(name)
        if k == 0 or (isinstance(m, nn.Conv2d) and m.groups != 1):
            continue
        out[name] = m
    if not out:
        raise CEPDError("the model has no conv layer to analyse (besides the first)")
    return out


def _weight(m: nn.Module) -> torch.Tensor:
    return (m.reconstruct() if isinstance(m, CEPDConv2d) else m.weight).detach()


# -- 6a: operational sequence ----------------------------------------------------------------
def sequence(
    model: nn.Module,
    shape: tuple[int, ...],
    *,
    ratio: float = 3.0,
    sparsity: float = 0.9,
    layout: str = "o-k-i",
    iters: int = 100,
) -> dict:
    """Weight MSE of L+S, S(L) and L(S) per conv layer at one compression ratio."""
    if ratio <= 1:
        raise CEPDError(f"the compression ratio must be > 1, got {ratio}")
    convs = conv_layers(model, shape)
    names, ws, lays, ranks, kappas, skipped = [], [], [], [], [], []
    for name, m in convs.items():
        w = _weight(m)
        choice = sequence_ranks(tuple(w.shape), layout, ratio, sparsity)
        if choice is None:
            skipped.append(name)
            continue
        names.append(name)
        ws.append(w)
        lays.append(choice[0])
        ranks.append(choice[1])
        kappas.append(choice[2])
    if not names:
        raise CEPDError(f"no layer reaches ratio {ratio} at sparsity {sparsity}: lower one of them")
    approx = sequences(ws, lays, ranks, kappas, iters=iters)
    rows, wins = [], dict.fromkeys(SEQUENCES, 0)
    for k, name in enumerate(names):
        row = {"name": name, "shape": list(ws[k].shape), "ranks": list(ranks[k]), "kappa": kappas[k]}
        row.update({s: mse(ws[k], approx[s][k]) for s in SEQUENCES})
        dense = ws[k].numel()
        row["ratio"] = dense / (lays[k].params(ranks[k]) + kappas[k] * dense // ws[k].shape[0])
        row["best"] = min(SEQUENCES, key=lambda s: row[s])
        wins[row["best"]] += 1
        rows.append(row)
    return {"ratio": ratio, "sparsity": sparsity, "layout": layout, "layers": rows, "wins": wins,
            "skipped": skipped}  # fmt: skip


# -- 6b: formats ---------------------------------------------------------------------------
def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named layer receives when the model runs on ``x``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: seen.__setitem__(n, args[0].detach())) for n in names]  # fmt: skip
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _conv_like(m: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    s = m.spec if isinstance(m, CEPDConv2d) else m
    return F.conv2d(x, w, None, s.stride, s.padding, s.dilation)


def formats(
    model: nn.Module,
    shape: tuple[int, ...],
    images: torch.Tensor,
    *,
    ratios: tuple[float, ...] = (2.0, 3.0, 4.0),
    layout: str = "o-k-i",
) -> dict:
    """Per layer and ratio: relative weight and output-feature-map errors of SVD/Tucker/TT."""
    convs = conv_layers(model, shape)
    inputs = layer_inputs(model, list(convs), images)
    rows = []
    for name, m in convs.items():
        w = _weight(m).float()
        y = _conv_like(m, inputs[name], w)
        for ratio in ratios:
            for method, got in format_approx(w, ratio, layout).items():
                if got is None:
                    continue
                approx, params = got
                rows.append({
                    "name": name, "ratio": ratio, "method": method, "params": params,
                    "achieved_ratio": w.numel() / params,
                    "weight_error": float(torch.linalg.vector_norm(w - approx) / torch.linalg.vector_norm(w)),
                    "weight_mse": mse(w, approx),
                    "feature_error": float(torch.linalg.vector_norm(_conv_like(m, inputs[name], approx) - y)
                                           / torch.linalg.vector_norm(y).clamp_min(1e-30)),
                })  # fmt: skip
    mean = {}
    for ratio in ratios:
        mean[str(ratio)] = {}
        for method in FORMATS:
            sel = [r for r in rows if r["ratio"] == ratio and r["method"] == method]
            if sel:
                keys = ("weight_error", "feature_error")
                mean[str(ratio)][method] = {k: sum(r[k] for r in sel) / len(sel) for k in keys}
    wins = {str(ratio): dict.fromkeys(FORMATS, 0) for ratio in ratios}
    for ratio in ratios:
        for name in convs:
            sel = [r for r in rows if r["ratio"] == ratio and r["name"] == name]
            if len(sel) == len(FORMATS):
                wins[str(ratio)][min(sel, key=lambda r: r["feature_error"])["method"]] += 1
    return {"ratios": list(ratios), "layout": layout, "samples": len(images), "layers": rows,
            "mean": mean, "feature_wins": wins}  # fmt: skip


def sample_images(data_spec: str, samples: int, image_size: int | None = None) -> torch.Tensor:
    """The first ``samples`` test images of a dataset (real inputs for feature-map errors)."""
    data = load_data(data_spec, image_size=image_size)
    n = min(samples, len(data.test))
    return next(iter(batches(data.test, torch.arange(n), n)))[0]


# -- 6c: ADMM vs direct ----------------------------------------------------------------------
def admm_vs_direct(base, targets: list[float], *, metric: str = "flops", out_dir: str | None = None,
                   progress: bool = True, model_fn=None) -> dict:  # fmt: skip
    """Accuracy after identical fine-tuning, ADMM vs direct, at several targets.

    ``base`` is a :class:`CompressConfig`; the direct method is the same pipeline with zero
    ADMM epochs (L = TT-truncate(W), S = the kappa largest filters of W - L), so the
    fine-tuning schedule, data order and augmentation are identical. Without
    ``base.weights`` the first run trains the dense baseline and the others reuse it.
    ``model_fn`` builds a network that is not from the zoo (as for :func:`compress`).
    """
    from cepd_deploy.compress.pipeline import compress

    if metric not in ("flops", "params"):
        raise CEPDError(f"metric must be flops or params, got {metric!r}")
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cepd-admm-vs-direct-")
        out_dir = tmp.name
    folder = Path(out_dir)
    if not folder.is_dir():
        raise CEPDError(f"output folder does not exist: {folder}")
    weights = base.weights
    rows = []
    try:
        for t in targets:
            row = {"target": t}
            for method, epochs_admm in (("direct", 0), ("ADMM", base.epochs_admm)):
                goal = {"flops_remaining": t, "params_remaining": None} if metric == "flops" else {
                    "flops_remaining": None, "params_remaining": t}  # fmt: skip
                baseline_out = str(folder / "baseline.pt") if weights is None else None
                cfg = dataclasses.replace(base, **goal, config=None, epochs_admm=epochs_admm,
                                          weights=weights, baseline_out=baseline_out, resume=False,
                                          output=str(folder / f"{method.lower()}-{t:g}.pt"))  # fmt: skip
                res = compress(cfg, progress=progress, model_fn=model_fn)
                weights = weights or baseline_out
                row["baseline_accuracy"] = res["baseline_accuracy"]
                row["flops_remaining"] = res["flops_remaining"]
                row["params_remaining"] = res["params_remaining"]
                before = res["direct_accuracy"] if method == "direct" else res["admm_accuracy"]
                row[f"{method}_before_ft"], row[method] = before, res["accuracy"]
            rows.append(row)
    finally:
        if tmp is not None:
            tmp.cleanup()
    wins = sum(r["ADMM"] > r["direct"] for r in rows)
    return {"metric": metric, "epochs_admm": base.epochs_admm, "epochs_finetune": base.epochs_finetune,
            "rows": rows, "admm_wins": wins}  # fmt: skip
