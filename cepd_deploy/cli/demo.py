"""``cepd-deploy demo``: the main job on embedded defaults, into one output folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    """Add ``demo`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "demo",
        help="run the main job on built-in models and print the tables",
        description="Convert ResNet-20 to a CEPD model (50% FLOPs), export and verify it in ONNX, "
        "emit and C-simulate its PYNQ-Z1 project, simulate it on Eyeriss, then print the ResNet-50 "
        "latency table (dense vs the paper's 66.3/46.1/37.1% FLOPs points; modelled FPGA/ASIC rows, "
        "measured CPU rows) next to the paper's. Everything lands in --out.",
    )
    p.add_argument("--out", default="cepd-demo", help="output folder (default: ./cepd-demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``demo``: run the demo into ``args.out`` and print its tables."""
    from cepd_deploy.demo import run_demo

    out, lines = run_demo(Path(args.out), quiet=args.quiet)
    for line in lines:
        print(line)
    print(f"\nall outputs are in {out.resolve()}")
    return 0
