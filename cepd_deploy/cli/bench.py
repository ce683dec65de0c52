"""``cepd-deploy bench``: the latency, throughput and memory table, dense vs CEPD, on every target."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cepd_deploy import threads
from cepd_deploy.cli.common import count, measure_on_hugepages, output_path, positive_int, print_json
from cepd_deploy.names import ALLOCATIONS


def register(sub) -> None:
    """Add ``bench`` to the subparsers ``sub`` (its targets: those bench can time or model)."""
    from cepd_deploy.bench.adapters import bench_targets
    from cepd_deploy.cli.common import add_model_options

    names = bench_targets()
    p = sub.add_parser(
        "bench",
        help="latency of dense vs CEPD models on every target, next to the paper's table",
        description="For the dense baseline and a CEPD conversion at each FLOPs point: the latency of "
        "a batch of --batch images (per image at the default 1) and the throughput on each target "
        "(modelled for pynq-z1 and eyeriss; measured for onnxruntime, tvm and torch, dense and CEPD "
        "interleaved, each timed run right after an untimed run of the same model, median of "
        "--repeats), the speedup over dense on the same target, the fraction "
        "of the FLOPs ideal (speedup x FLOPs remaining) and, for onnxruntime and tvm, the peak "
        "resident memory of a process running each model.",
    )
    p.add_argument("--model", default="resnet50",
                   help="zoo architecture (default resnet50) or your own network as MODULE:ATTR (as for "
                   "convert: naming it imports and runs that code), or a CEPD model file: then that model "
                   "against its dense architecture, and --flops-remaining and --allocation do not "
                   "apply")  # fmt: skip
    add_model_options(p)
    p.add_argument("--flops-remaining", type=float, nargs="+", default=[0.663, 0.461, 0.371],
                   metavar="F", help="CEPD operating points (default: the paper's three)")  # fmt: skip
    p.add_argument("--targets", nargs="+", default=["pynq-z1", "eyeriss", "onnxruntime", "torch"],
                   choices=names, metavar="T", help=f"any of: {', '.join(names)}")  # fmt: skip
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                   help="rank allocation of the CEPD models (as for convert; default uniform)")
    p.add_argument("--threads", type=threads.arg, default=2, help="intra-op threads for measured targets")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="images per run: the models are lowered for this batch and every target runs it "
                   "whole; the table gives the batch's latency and images/s (default 1)")  # fmt: skip
    p.add_argument("--dense-stages", choices=("auto", "none"), default="auto",
                   help="auto (default): CEPD models on onnxruntime-native run dense the stages measured "
                   "faster dense there, as export --fused writes them (rows keep the model's FLOPs "
                   "remaining); none: every CEPD layer runs as CEPD")  # fmt: skip
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory measurement (one process per runtime and model)")  # fmt: skip
    p.add_argument("--repeats", type=positive_int, default=15, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=count, default=3, help="untimed rounds before the timed ones (default 3)")
    p.add_argument("--eyeriss-spec", default="eyeriss_scaled",
                   help="Eyeriss preset or YAML path (default: the preset at the paper's scale)")
    p.add_argument("--pynq-bits", type=int, default=16, metavar="BITS",
                   help="the pynq-z1 engine's data width, 4 to 16 (8 or fewer: the 8-bit engine, two MACs "
                   "per DSP; default 16)")  # fmt: skip
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the rows as JSON to PATH (or print them with no PATH)")  # fmt: skip
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV to PATH")
    p.add_argument("--markdown", metavar="PATH", help="write the table as Markdown to PATH")
    p.add_argument("--plot", metavar="PATH", help="PNG: speedup vs FLOPs remaining per target")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``bench``: run the table, write the files asked for (--json/--csv/--markdown/--plot) and print
    it (or its JSON)."""
    outs = {k: output_path(v) for k, v in (("json", args.json), ("csv", args.csv),
            ("markdown", args.markdown), ("plot", args.plot)) if v and v != "-"}  # fmt: skip
    from cepd_deploy.bench.adapters import measured

    if any(measured(t) for t in args.targets):
        measure_on_hugepages()  # re-executes: before anything heavy loads
    from cepd_deploy.bench import report as rep
    from cepd_deploy.bench import run_bench
    from cepd_deploy.cli.common import model_options
    from cepd_deploy.files import atomic_write

    rows = run_bench(args.model, tuple(args.flops_remaining), tuple(args.targets), threads=args.threads,
                     repeats=args.repeats, warmup=args.warmup, eyeriss_spec=args.eyeriss_spec,
                     progress=not args.quiet, allocation=args.allocation,
                     source=model_options(args), batch=args.batch, memory=args.memory,
                     pynq_bits=args.pynq_bits, dense_stages=args.dense_stages == "auto")  # fmt: skip
    payload = rep.to_payload(rows, args.model)  # the machine of the measured rows included
    texts = {"json": json.dumps(payload, indent=1), "csv": rep.to_csv(rows), "markdown": rep.markdown(rows)}
    for key, path in outs.items():
        if key == "plot":
            atomic_write(path, lambda f: rep.plot(rows, f, args.model))
        else:
            atomic_write(path, lambda f, t=texts[key]: f.write(t.encode()))
    if args.json == "-":
        print_json(payload)
    else:
        print(rep.text_table(rows))
        for path in outs.values():
            print(f"wrote {Path(path)}")
    return 0
