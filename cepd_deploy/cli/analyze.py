"""``cepd-deploy analyze``: the paper's analyses (sequence, format, admm-vs-direct)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cepd_deploy.cli.common import add_json_arg, add_model_arg, model_options, output_path, print_json


def register(sub) -> None:
    """Add ``analyze`` and its three analyses to the subparsers ``sub``."""
    p = sub.add_parser("analyze", help="the paper's analyses: sequence, format, admm-vs-direct",
                       description="Analyses of CEPD's design choices, each printed as a table "
                       "(or --json) and, with --png, drawn as a figure.")  # fmt: skip
    kinds = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    s = kinds.add_parser("sequence", help="weight MSE of L+S, S(L), L(S) per layer (Tables 5-7)",
                         description="Per conv layer, the weight approximation error (MSE) of L and S "
                         "found together (L+S), S after L (S(L)) and L after S (L(S)), at the same ranks "
                         "and kept filters, i.e. the same compression ratio.")  # fmt: skip
    add_model_arg(s)
    s.add_argument("--ratio", type=float, default=3.0, help="per-layer compression ratio (default 3.0)")
    s.add_argument("--sparsity", type=float, default=0.9, help="filter sparsity of S (default 0.9)")
    s.add_argument("--layout", default="o-k-i", help="TT layout (default o-k-i)")
    s.add_argument("--iters", type=int, default=100, help="ADMM rounds for L+S (default 100)")
    s.add_argument("--png", metavar="PATH", help="also draw the figure to PATH (.png)")
    add_json_arg(s)
    s.set_defaults(func=run_sequence)

    f = kinds.add_parser("format", help="flattened SVD vs Tucker vs TT at equal compression (Tables 8-9)",
                         description="Per conv layer and compression ratio: relative weight error and "
                         "relative output-feature-map error on real inputs of a rank-r SVD of the "
                         "flattened weight, a Tucker-2 decomposition and a TT decomposition with equal "
                         "parameter budgets.")  # fmt: skip
    add_model_arg(f)
    f.add_argument("--ratios", type=float, nargs="+", default=[2.0, 3.0, 4.0], help="default 2 3 4")
    f.add_argument("--data", default="digits", help="where the real inputs come from (default digits)")
    f.add_argument("--samples", type=int, default=128, help="test images fed through (default 128)")
    f.add_argument("--layout", default="o-k-i", help="TT layout (default o-k-i)")
    f.add_argument("--png", metavar="PATH", help="also draw the figure to PATH (.png)")
    add_json_arg(f)
    f.set_defaults(func=run_format)

    a = kinds.add_parser("admm-vs-direct", help="accuracy after identical fine-tuning (Figure 6)",
                         description="At each target, compress with ADMM and with the direct method "
                         "(TT-SVD, then the largest filters of the residual), fine-tune both "
                         "identically and compare test accuracy. Trains the dense baseline first "
                         "without --weights.")  # fmt: skip
    from cepd_deploy.cli.compress import add_training_args

    goal = a.add_mutually_exclusive_group()
    goal.add_argument("--flops-remaining", type=float, nargs="+", help="targets (default 0.5 0.35 0.2)")
    goal.add_argument("--params-remaining", type=float, nargs="+", help="targets as params fractions")
    add_training_args(a)
    a.add_argument("--out-dir", help="keep every model and log here (default: a temporary folder)")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.add_argument("--png", metavar="PATH", help="also draw the figure to PATH (.png)")
    add_json_arg(a)
    a.set_defaults(func=run_admm_vs_direct)


def _fmt(x: float) -> str:
    return f"{x:.3e}"


def _png(args: argparse.Namespace) -> Path | None:
    """The --png path (checked before the work), or None: figures only when asked for."""
    return output_path(args.png, suffix=".png") if args.png else None


def _figure(png: Path | None) -> str:
    return f"; figure {png}" if png else ""


def run_sequence(args: argparse.Namespace) -> int:
    """``analyze sequence``: print (or --json) the per-layer weight MSE of L+S, S(L) and L(S)."""
    png = _png(args)  # before anything heavy loads
    from cepd_deploy.compress.analysis import sequence
    from cepd_deploy.compress.plots import plot_sequence
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.report import format_table

    model, shape, label = resolve(args.model, **model_options(args))
    res = sequence(model, shape, ratio=args.ratio, sparsity=args.sparsity, layout=args.layout,
                   iters=args.iters)  # fmt: skip
    res["model"] = label
    if png:
        plot_sequence(res, png)
        res["png"] = str(png)
    if args.json:
        print_json(res)
        return 0
    rows = [[r["name"], "x".join(map(str, r["shape"])), ",".join(map(str, r["ranks"])), r["kappa"],
             f"{r['ratio']:.2f}", _fmt(r["L+S"]), _fmt(r["S(L)"]), _fmt(r["L(S)"]), r["best"]]
            for r in res["layers"]]  # fmt: skip
    print(format_table(["layer", "weight", "ranks", "kept", "ratio", "L+S", "S(L)", "L(S)", "lowest"],
                       rows, "lllrrrrrl"))  # fmt: skip
    wins = ", ".join(f"{k} {v}" for k, v in res["wins"].items())
    print(f"lowest MSE ({len(res['layers'])} layers): {wins}{_figure(png)}")
    return 0


def run_format(args: argparse.Namespace) -> int:
    """``analyze format``: print (or --json) the weight and feature-map errors of SVD, Tucker and TT
    per layer, one table per compression ratio."""
    png = _png(args)  # before anything heavy loads
    from cepd_deploy.compress.analysis import formats, sample_images
    from cepd_deploy.compress.approx import FORMATS
    from cepd_deploy.compress.plots import plot_formats
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.report import format_table

    model, shape, label = resolve(args.model, **model_options(args))
    images = sample_images(args.data, args.samples, image_size=shape[-1])
    if tuple(images.shape[1:]) != tuple(shape[1:]):
        from cepd_deploy.errors import CEPDError

        raise CEPDError(f"--data {args.data} gives {tuple(images.shape[1:])} inputs, the model takes "
                        f"{tuple(shape[1:])}")  # fmt: skip
    res = formats(model, shape, images, ratios=tuple(args.ratios), layout=args.layout)
    res["model"] = label
    if png:
        plot_formats(res, png)
        res["png"] = str(png)
    if args.json:
        print_json(res)
        return 0
    for ratio in res["ratios"]:
        by_layer: dict[str, dict] = {}
        for r in res["layers"]:
            if r["ratio"] == ratio:
                by_layer.setdefault(r["name"], {})[r["method"]] = r
        rows = []
        for name, got in by_layer.items():
            row = [name]
            for key in ("weight_error", "feature_error"):
                row += [f"{got[m][key]:.4f}" if m in got else "-" for m in FORMATS]
            rows.append(row)
        mean = res["mean"][str(ratio)]
        rows.append(["mean"] + [f"{mean[m][k]:.4f}" if m in mean else "-"
                                for k in ("weight_error", "feature_error") for m in FORMATS])  # fmt: skip
        heads = ["layer"] + [f"W {m}" for m in FORMATS] + [f"fmap {m}" for m in FORMATS]
        print(f"compression ratio {ratio:g} (relative errors; W: weights, fmap: output feature maps)")
        print(format_table(heads, rows, "l" + "r" * 6))
        wins = ", ".join(f"{k} {v}" for k, v in res["feature_wins"][str(ratio)].items())
        print(f"lowest feature-map error: {wins}\n")
    if png:
        print(f"figure {png}")
    return 0


def run_admm_vs_direct(args: argparse.Namespace) -> int:
    """``analyze admm-vs-direct``: print (or --json) the test accuracy (%) of ADMM and direct
    compression at each target after identical fine-tuning."""
    png = _png(args)  # before anything heavy loads
    from cepd_deploy.cli.compress import config_from
    from cepd_deploy.compress.analysis import admm_vs_direct
    from cepd_deploy.compress.plots import plot_admm_vs_direct
    from cepd_deploy.plan.report import format_table

    metric = "params" if args.params_remaining else "flops"
    targets = args.params_remaining or args.flops_remaining or [0.5, 0.35, 0.2]
    base = config_from(args, output="", flops_remaining=targets[0])
    res = admm_vs_direct(base, targets, metric=metric, out_dir=args.out_dir, progress=not args.no_progress)
    if png:
        plot_admm_vs_direct(res, png)
        res["png"] = str(png)
    if args.json:
        print_json(res)
        return 0
    rows = [[f"{r['target']:g}", f"{r['flops_remaining']:.1%}", f"{r['params_remaining']:.1%}",
             f"{r['direct_before_ft']:.2f}", f"{r['direct']:.2f}", f"{r['ADMM_before_ft']:.2f}",
             f"{r['ADMM']:.2f}", f"{r['ADMM'] - r['direct']:+.2f}"] for r in res["rows"]]  # fmt: skip
    heads = ["target", "FLOPs", "params", "direct (no FT)", "direct", "ADMM (no FT)", "ADMM", "ADMM-direct"]
    epochs = f"{_epochs(res['epochs_admm'], 'ADMM')}, {_epochs(res['epochs_finetune'], 'fine-tuning')}"
    print(f"test accuracy (%), dense baseline {res['rows'][0]['baseline_accuracy']:.2f}; {epochs} for both")
    print(format_table(heads, rows, "l" + "r" * 7))
    print(f"ADMM ahead at {res['admm_wins']} of {len(res['rows'])} targets{_figure(png)}")
    return 0


def _epochs(n: int, kind: str) -> str:
    """``1 ADMM epoch``, ``3 ADMM epochs``."""
    return f"{n} {kind} epoch{'' if n == 1 else 's'}"
