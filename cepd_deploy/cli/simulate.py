"""``cepd-deploy simulate``: a model's cost on modelled or simulated hardware (every target that
estimates: the Eyeriss simulator, the PYNQ-Z1 latency/resource model)."""

from __future__ import annotations

import argparse

from cepd_deploy.cli.common import add_json_arg, add_model_arg, output_path, positive_int, print_json
from cepd_deploy.cli.options import add_target_options, options_for
from cepd_deploy.errors import CEPDError


def register(sub) -> None:
    """Add ``simulate`` to the subparsers ``sub``, with the options of every target that estimates."""
    from cepd_deploy import targets

    estimators = [t for t in targets.all_targets() if t.can("estimate")]
    listing = "; ".join(f"{t.name}: {t.summary}" for t in estimators)
    p = sub.add_parser(
        "simulate",
        help="per-layer latency, PE use, memory traffic and energy on an accelerator model",
        description="Lower a model to its Plan and estimate it on modelled hardware, per op and in "
        f"total. Targets: {listing}.",
    )
    add_model_arg(p)
    p.add_argument("--target", default="eyeriss", metavar="NAME",
                   help=f"default eyeriss; one of: {', '.join(t.name for t in estimators)}")  # fmt: skip
    p.add_argument("--batch", type=positive_int, default=1, help="images per run (default 1)")
    p.add_argument("--plot", metavar="OUT.png", help="also draw the estimate (eyeriss: energy by level, "
                   "latency per op)")  # fmt: skip
    add_target_options(p, estimators)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``simulate``: print the target's estimate of the model (or its JSON); with --plot, draw it."""
    from cepd_deploy import targets

    target = targets.get(args.target)
    if not target.can("estimate"):
        raise CEPDError(f"target {target.name!r} ({target.kind.value}) does not estimate; simulate runs: "
                        f"{', '.join(targets.names('estimate'))}")  # fmt: skip
    plot_path = output_path(args.plot, suffix=".png") if args.plot else None
    options = options_for(target, args)
    from cepd_deploy.cli.common import model_options
    from cepd_deploy.files import atomic_write
    from cepd_deploy.frontend.load import load_plan

    loaded = load_plan(args.model, batch=args.batch, **model_options(args))
    est = target.estimate(loaded.plan, options)
    if plot_path is not None:
        if est.draw is None:
            raise CEPDError(f"target {target.name!r} draws no figure; drop --plot")
        atomic_write(plot_path, est.draw)
    shape = list(loaded.plan.input_shape)
    if args.json:
        print_json({"model": loaded.label, "target": target.name, "input_shape": shape, **est.figures})
    else:
        print(f"{loaded.label}  input {tuple(shape)}  on {target.name}")
        print(est.text)
        if plot_path is not None:
            print(f"wrote {plot_path}")
    return 0
