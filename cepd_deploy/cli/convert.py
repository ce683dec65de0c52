"""``cepd-deploy convert``: a zoo model, your own network (``MODULE:ATTR``) or a model file -> CEPD
model file at a target."""

from __future__ import annotations

import argparse

from cepd_deploy import threads
from cepd_deploy.cli.common import (
    add_json_arg,
    add_model_options,
    fraction,
    measure_on_hugepages,
    model_options,
    output_path,
    print_json,
)
from cepd_deploy.errors import CEPDError
from cepd_deploy.names import ALLOCATIONS


def register(sub) -> None:
    """Add ``convert`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "convert",
        help="replace convs by CEPD convs at a FLOPs/params target or from a rank config",
        description="Convert a model's Conv2d layers to CEPD convs (TT-SVD + l1 filter selection: "
        "the paper's direct method) and save a CEPD model file.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="zoo architecture, or your own network as MODULE:ATTR (pkg.nets:make_net "
                     "or path/to/nets.py:MyNet, a class or factory: naming it imports and runs that code; "
                     "with --input-shape and --model-args); random weights unless --weights")  # fmt: skip
    src.add_argument("--model", help="an existing model file to convert (or a zoo name / MODULE:ATTR)")
    p.add_argument("--weights", help="a model file with trained dense weights for --arch")
    add_model_options(p)
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--flops-remaining", type=fraction, help="target fraction of dense MACs, e.g. 0.461")
    goal.add_argument("--params-remaining", type=fraction, help="target fraction of dense params")
    goal.add_argument("--config", help="YAML/JSON per-layer ranks (see README)")
    p.add_argument("--sparsity", type=float, default=0.9, help="filter sparsity of S (default 0.9)")
    p.add_argument("--layout", default="o-k-i",
                   help="TT layout: o-k-i (default), eq9, oo-k-ii or a spec like 'o1|o2|k|i1|i2'")
    p.add_argument("--convert-first", action="store_true", help="also convert the first conv")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                   help="how a FLOPs/params target is spread over layers: uniform (one cost ratio for "
                   "all, default), ort-latency (the layers and ranks with the least measured "
                   "onnxruntime latency on this machine, portable export) or library-latency (the "
                   "same on the custom-op library, first stage kept dense); ranks in multiples of "
                   "16; each layer option is measured once, cached")
    p.add_argument("--rank-multiple", type=int, default=None,
                   help="allocate ranks in multiples of this (default 1; 16 with a latency allocation)")
    p.add_argument("--threads", type=threads.arg, default=2,
                   help="threads for a latency allocation (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (latency allocations)")
    p.add_argument("-o", "--output", required=True, help="output model file (.pt)")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``convert``: convert the model at the target, save it and print its FLOPs and params remaining."""
    if args.allocation != "uniform":
        measure_on_hugepages()  # the allocation measures latency: first, before loading anything
    out = output_path(args.output)  # the argument errors first, before anything heavy loads
    if args.weights and not args.arch:
        raise CEPDError("--weights goes with --arch")
    if args.allocation != "uniform" and args.config:
        raise CEPDError(f"--allocation {args.allocation} needs --flops-remaining or --params-remaining")
    if args.rank_multiple is not None and args.rank_multiple < 1:
        raise CEPDError(f"--rank-multiple must be >= 1, got {args.rank_multiple}")
    from cepd_deploy.frontend.allocation import allocation_kwargs
    from cepd_deploy.frontend.convert import convert
    from cepd_deploy.frontend.lower import lower
    from cepd_deploy.model.format import load, resolve, save
    from cepd_deploy.plan.cost import totals

    model, shape, _ = resolve(args.arch or args.model, **model_options(args))
    if args.weights:
        model = load(args.weights, template=model)
    kw = allocation_kwargs(args.allocation, args.threads, progress=not args.no_progress)
    if args.rank_multiple is not None:
        kw["rank_multiple"] = args.rank_multiple
    cepd = convert(model, flops_remaining=args.flops_remaining, params_remaining=args.params_remaining,
                   config=args.config, sparsity=args.sparsity, layout=args.layout,
                   input_shape=shape, convert_first=args.convert_first, **kw)  # fmt: skip
    if hasattr(model, "cepd_arch"):
        cepd.cepd_arch = model.cepd_arch
    save(cepd, out, input_shape=shape)
    t = totals(lower(cepd, shape))
    if args.json:
        print_json({"output": str(out), "totals": t})
    else:
        print(f"wrote {out}: {t['flops_remaining']:.1%} FLOPs, {t['params_remaining']:.1%} params remaining")
    return 0
