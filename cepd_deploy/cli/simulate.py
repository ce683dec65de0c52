"""``cepd-deploy simulate``: a model's Plan on an accelerator cost simulator (Eyeriss)."""

from __future__ import annotations

import argparse

from cepd_deploy.cli.common import add_json_arg, add_model_arg, output_path, print_json
from cepd_deploy.errors import CEPDError

#: targets that provide ``simulate`` (the others run or build)
SIMULATORS = ("eyeriss",)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _zeros(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="per-layer latency, PE use, memory traffic and energy on an accelerator model",
        description="Lower a model to its Plan and map every op onto an accelerator with a "
        "row-stationary mapping search (Eyeriss): cycles and ms, active PEs, accesses per memory "
        "level, DRAM bytes and energy (relative to a MAC), per op and in total.",
    )
    add_model_arg(p)
    p.add_argument("--target", default="eyeriss",
                   help=f"simulator target (default eyeriss; one of: {', '.join(SIMULATORS)})")  # fmt: skip
    p.add_argument("--spec", default="eyeriss_v1",
                   help="a preset in hw/eyeriss/ (eyeriss_v1, eyeriss_scaled) or a .yaml path")
    p.add_argument("--batch", type=_positive, default=1, help="images per run (default 1)")
    p.add_argument("--objective", choices=("latency", "energy"), default="latency",
                   help="what the mapping search minimises (default latency)")  # fmt: skip
    p.add_argument("--zeros", type=_zeros, default=None,
                   help="zero fraction of ReLU outputs (DRAM compression, zero gating; default 0.5)")
    p.add_argument("--plot", metavar="OUT.png", help="also plot energy by level and latency per op")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.lower import lower
    from cepd_deploy.targets import get

    target = get(args.target)
    if args.target not in SIMULATORS or not hasattr(target, "simulate"):
        raise CEPDError(f"target {args.target!r} is not a simulator; simulate runs: {', '.join(SIMULATORS)}")
    from cepd_deploy.targets.eyeriss.report import plot, table

    plot_path = output_path(args.plot) if args.plot else None
    spec = target.load_spec(args.spec)
    model, shape, label = resolve(args.model, args.input_shape)
    plan = lower(model, (args.batch, *shape[1:]))
    zeros = target.DEFAULT_ZEROS if args.zeros is None else args.zeros
    result = target.simulate(plan, spec, objective=args.objective, zeros=zeros)
    if plot_path is not None:
        plot(result, plot_path)
    if args.json:
        print_json({"model": label, "input_shape": [args.batch, *shape[1:]], **result.to_json()})
    else:
        print(f"{label}  input {(args.batch, *shape[1:])}")
        print(table(result))
        if plot_path is not None:
            print(f"wrote {plot_path}")
    return 0
