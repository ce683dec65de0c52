"""``cepd-deploy inspect``: the per-layer table of a model's Plan and its totals."""

from __future__ import annotations

import argparse

from cepd_deploy import threads
from cepd_deploy.cli.common import add_json_arg, add_model_arg, model_options, print_json

RUNTIMES = ("onnxruntime", "onnxruntime-native")


def register(sub) -> None:
    """Add ``inspect`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "inspect",
        help="per-layer structure, params and MACs of a model file or zoo model",
        description="Lower a model to its Plan and print, per conv/linear layer: weight shape, "
        "TT layout and factorisation, ranks, kept filters, contraction order, params and MACs. "
        "With --latency, also what each CEPD layer costs on this CPU next to the dense conv it "
        "replaced (measured, cached per machine like convert's latency-aware allocations), and "
        "which stages run dense in the whole model on that runtime (as export writes them with "
        "--dense-stages).",
    )
    add_model_arg(p)
    add_json_arg(p)
    p.add_argument("--latency", choices=RUNTIMES,
                   help="time every CEPD layer and its dense conv alone on this CPU with this runtime: "
                        "onnxruntime (the portable export) or onnxruntime-native (the fused export on "
                        "the custom-op library); single layers, warm caches, without the residual add "
                        "(bench times whole models)")  # fmt: skip
    p.add_argument("--threads", type=threads.arg, default=2, help="threads for --latency (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``inspect``: print the model's per-layer table and totals (or their JSON)."""
    from cepd_deploy.bench.machine import machine_info
    from cepd_deploy.frontend.candidates import why_dense
    from cepd_deploy.frontend.lower import lower
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.cost import totals
    from cepd_deploy.plan.report import layer_rows, summary

    model, shape, label = resolve(args.model, **model_options(args))
    plan = lower(model, shape)
    why = why_dense(model, plan)
    lat = _latency(model, plan, args.latency, args.threads) if args.latency else None
    stages = None
    if lat:
        from cepd_deploy.frontend.dense_stages import dense_stages

        stages = dense_stages(model, shape, args.latency, threads=args.threads, progress=not args.json)
    if args.json:
        rows = layer_rows(plan, why)
        for row in rows:
            if row["name"] in (lat or {}):
                row["ms"], row["dense_ms"] = lat[row["name"]]
        timed = {"runtime": args.latency, "machine": machine_info(args.threads)}
        if stages is not None:
            timed["dense_stages"] = stages.to_json()
        extra = {"latency": timed} if lat is not None else {}
        print_json({"model": label, "input_shape": list(shape), "layers": rows, "totals": totals(plan)}
                   | extra)  # fmt: skip
    else:
        print(f"{label}  input {tuple(shape)}")
        print(summary(plan, why, lat))
        if lat is not None:
            print(_latency_footer(lat, args.latency, args.threads))
        if stages is not None:
            print(f"whole model: {stages.describe()}")
    return 0


def _latency(model, plan, runtime: str, n_threads: int) -> dict[str, tuple[float, float]]:
    """Layer -> (ms, dense ms): every CEPD layer and its dense conv timed alone, interleaved."""
    from cepd_deploy.frontend.allocation import LibraryLatency, OrtLatency
    from cepd_deploy.frontend.convert import layer_probes

    probes = layer_probes(model, plan)
    if not probes:
        return {}
    timer = (LibraryLatency if runtime == "onnxruntime-native" else OrtLatency)(threads=n_threads)
    pairs = list(probes.values())
    ms = timer.times([(p, r) for p, r in pairs] + [(p, None) for p, _ in pairs])
    timer.save()
    return {name: (ms[i], ms[len(pairs) + i]) for i, name in enumerate(probes)}


def _latency_footer(lat: dict[str, tuple[float, float]], runtime: str, n_threads: int) -> str:
    from cepd_deploy.bench.machine import describe, machine_info

    if not lat:
        return "latency: no CEPD conv layers to time"
    ms, dense = (sum(v[i] for v in lat.values()) for i in (0, 1))
    slower = [f"{n} ({a / d:.2f}x)" for n, (a, d) in lat.items() if a > d]
    return "\n".join([
        f"latency ({runtime}, single layers): CEPD layers {ms:.2f} ms against {dense:.2f} ms for the "
        f"dense convs they replaced ({dense / ms:.2f}x)",
        "slower than their dense conv alone on this CPU: " + (", ".join(slower) if slower else "none"),
        f"measured on: {describe(machine_info(n_threads))}",
    ])  # fmt: skip
