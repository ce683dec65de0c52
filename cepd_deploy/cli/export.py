"""``cepd-deploy export``: a model file or zoo model -> ONNX (portable or fused), optionally verified."""

from __future__ import annotations

import argparse

from cepd_deploy import threads
from cepd_deploy.cli.common import add_json_arg, add_model_arg, model_options, output_path, print_json

FORMATS = ["onnx"]


def register(sub) -> None:
    """Add ``export`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "export",
        help="export a model's Plan to ONNX (standard ops, or fused TTSparseConv nodes)",
        description="Lower a model to its Plan and write it as ONNX. Portable (default): standard "
        "ops only (opset 18). --fused: one ai.cepd::TTSparseConv node per CEPD layer with a "
        "function body of standard ops, so stock onnxruntime runs it too.",
    )
    add_model_arg(p)
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default onnx)")
    p.add_argument("--fused", action="store_true", help="one TTSparseConv node per CEPD layer")
    p.add_argument("--dense-stages", choices=("auto", "measure", "none"), default="auto",
                   help="run dense (as the conv W = L + S, same function, more MACs) the stages whose "
                   "CEPD layers are slower on this CPU, measured by timing the whole model with each "
                   "stage dense: 'measure' times the export's runtime (the custom-op library for "
                   "--fused, stock onnxruntime for a portable export); 'auto' (default) does so for "
                   "--fused where the library is built; 'none' keeps every CEPD layer")  # fmt: skip
    p.add_argument("--threads", type=threads.arg, default=2,
                   help="threads the dense stages are measured with (default 2)")
    p.add_argument("--verify", action="store_true",
                   help="run onnxruntime against the Plan reference and torch on random inputs")  # fmt: skip
    p.add_argument("--samples", type=int, default=2, help="random inputs for --verify (default 2)")
    p.add_argument("-o", "--output", required=True, help="output file (.onnx)")
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``export``: write the model's Plan as ONNX (with --verify, only once it passes) and print
    what was written; 1 where verification failed."""
    out = output_path(args.output, suffix=".onnx")  # before anything heavy loads
    import onnx

    from cepd_deploy.files import atomic_write
    from cepd_deploy.frontend.lower import lower
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.cost import totals
    from cepd_deploy.targets.onnx import prepare, to_model

    model, shape, label = resolve(args.model, **model_options(args))
    stages = _dense_stages(model, shape, args)
    plan = lower(model, shape)
    file_plan = stages.plan if stages is not None else plan  # what the file computes
    proto = to_model(prepare(file_plan), fused=args.fused, name=out.stem)
    if stages is not None and stages.standard:  # layers the library leaves to onnxruntime
        from cepd_deploy.targets.onnx.ort_library import mark_standard

        mark_standard(proto, stages.standard)
    result = {"model": label, "output": str(out), "format": args.format, "fused": args.fused,
              "input_shape": list(shape), "totals": totals(plan)}  # fmt: skip
    if stages is not None:
        result["dense_stages"] = stages.to_json() | {"run_totals": totals(file_plan)}
    if args.verify:  # the file is written only once the model passes
        from cepd_deploy.targets.onnx.verify import compare, summary

        checks = compare(file_plan, proto, model, samples=max(1, args.samples))
        result["verify"] = summary(checks)
        result["checks"] = [c.as_dict() for c in checks]
    written = not args.verify or result["verify"]["ok"]
    if written:
        atomic_write(out, lambda f: onnx.save(proto, f))
    else:
        result["output"] = None
    if args.json:
        print_json(result)
    else:
        kind = "fused" if args.fused else "portable"
        what = f"{kind} ONNX, {result['totals']['flops_remaining']:.1%} FLOPs remaining"
        print(f"wrote {out} ({what})" if written else f"not written: {out} ({what}) failed verification")
        if stages is not None:
            print(f"  {stages.describe()}")
        if args.verify:
            for c in (c for c in result["checks"] if c["value"] == file_plan.output):
                print(f"  output {c['value']} vs {c['against']}: max abs error {c['max_abs_error']:.3g}"
                      f" (max|y| {c['max_abs_ref']:.3g})")  # fmt: skip
            v = result["verify"]
            w = v["worst"]
            print(f"  {v['outputs_checked']} outputs checked, worst {w['value']} "
                  f"{w['max_abs_error']:.3g} / {w['max_abs_ref']:.3g}: {'OK' if v['ok'] else 'FAILED'}")
    if args.verify and not result["verify"]["ok"]:
        return 1
    return 0


def _dense_stages(model, shape, args: argparse.Namespace):
    """The measured dense stages (``DenseStages``) the export applies, or None."""
    from cepd_deploy.frontend.dense_stages import dense_stages
    from cepd_deploy.targets.onnx import ort_library

    runtime = "onnxruntime-native" if args.fused else "onnxruntime"
    auto = args.fused and ort_library.available()
    if args.dense_stages == "none" or (args.dense_stages == "auto" and not auto):
        return None
    return dense_stages(model, shape, runtime, threads=args.threads, progress=not args.json)
