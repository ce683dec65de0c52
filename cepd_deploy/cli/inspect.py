"""``cepd-deploy inspect``: the per-layer table of a model's Plan and its totals."""

from __future__ import annotations

import argparse

from cepd_deploy.cli.common import add_json_arg, add_model_arg, model_options, print_json


def register(sub) -> None:
    """Add ``inspect`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "inspect",
        help="per-layer structure, params and MACs of a model file or zoo model",
        description="Lower a model to its Plan and print, per conv/linear layer: weight shape, "
        "TT layout and factorisation, ranks, kept filters, contraction order, params and MACs.",
    )
    add_model_arg(p)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``inspect``: print the model's per-layer table and totals (or their JSON)."""
    from cepd_deploy.frontend.candidates import why_dense
    from cepd_deploy.frontend.lower import lower
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.cost import totals
    from cepd_deploy.plan.report import layer_rows, summary

    model, shape, label = resolve(args.model, **model_options(args))
    plan = lower(model, shape)
    why = why_dense(model, plan)
    if args.json:
        print_json({"model": label, "input_shape": list(shape), "layers": layer_rows(plan, why),
                    "totals": totals(plan)})  # fmt: skip
    else:
        print(f"{label}  input {tuple(shape)}")
        print(summary(plan, why))
    return 0
