"""``cepd-deploy build``: a deployable artifact of a model for one target (dispatched by name)."""

from __future__ import annotations

import argparse
import sys

from cepd_deploy.cli.common import add_json_arg, add_model_arg, print_json
from cepd_deploy.errors import CEPDError

TVM_KINDS = ("llvm", "cuda")  # `--target llvm|cuda` builds with the TVM target


def register(sub) -> None:
    from cepd_deploy.targets import REGISTRY

    p = sub.add_parser(
        "build",
        help="build a deployable project for a target (pynq-z1: an HLS overlay project)",
        description="Build what a target needs to run MODEL. pynq-z1: engine C++, Vitis HLS/Vivado "
        "Tcl, Makefile, driver.py, weight blob and golden vectors; --csim runs the C-simulation, "
        "--report prints the latency/resource estimate per layer.",
    )
    add_model_arg(p)
    names = ", ".join([*REGISTRY, *TVM_KINDS])
    p.add_argument("--target", required=True, metavar="NAME", help=f"one of: {names} (llvm, cuda: TVM)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; replaced if made by build)")
    p.add_argument(
        "--csim", action="store_true", help="compile and run the C-simulation on the golden images"
    )
    p.add_argument("--report", action="store_true", help="print the per-layer latency estimate")
    p.add_argument("--clock-mhz", type=float, help="PL clock (pynq-z1; default 100)")
    p.add_argument("--bits", type=int, help="fixed-point width of data and weights (pynq-z1; default 16)")
    p.add_argument("--calib", type=int, default=8, help="calibration samples (default 8)")
    p.add_argument("--golden", type=int, default=4, help="golden images for csim and the driver (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample images")
    p.add_argument("--verify", action="store_true", help="run the build against torch (llvm/cuda)")
    p.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trials per distinct kernel, cached (llvm; default 0: untuned)")
    p.add_argument("--threads", type=int, help="CPU threads the build targets (llvm; default: all)")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cepd_deploy.targets import get

    target = get("tvm" if args.target in TVM_KINDS else args.target)
    if not hasattr(target, "cli"):  # a target plugs in with cli(args) -> (figures, text, exit code)
        raise CEPDError(f"target {args.target!r} does not implement `build` (no cli(args) entry point)")
    result, text, code = target.cli(args)
    if args.json:
        print_json(result)
    else:
        print(text)
    if code:
        print("cepd-deploy: the C-simulation does not match the fixed-point reference", file=sys.stderr)
    return code
