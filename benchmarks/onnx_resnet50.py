"""Dense ResNet-50 on onnxruntime vs CEPD ResNet-50 (portable, fused, fused on the native
kernel; uniform and latency-aware rank allocations) and eager torch (dense, CEPD,
CEPD on the native kernel).

    python benchmarks/onnx_resnet50.py -o benchmarks/out/onnx_resnet50.json [--rank-multiple 16]

Batch 1, 224x224, 2 threads everywhere, no spinning (onnxruntime's allow_spinning=0, OpenMP's
OMP_WAIT_POLICY=PASSIVE: on a shared machine spinning threads made eager torch 20x slower),
all runs in one process, interleaved. Writes median ms, speedup vs the dense row of the same
runtime and the fraction of the FLOPs ideal (speedup x FLOPs remaining), plus the onnxruntime
profile split of the slowest CEPD layers at the middle point, and the machine (CPU, kernel
build, threads, load average at start; ``cepd_deploy.bench.machine``).
"""

from __future__ import annotations

import os

from cepd_deploy.process import configure

configure()  # OMP_WAIT_POLICY=PASSIVE unless set: before torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402

import torch  # noqa: E402
from onnx_cases import (  # noqa: E402
    ALLOCATIONS,
    POINTS,
    SHAPE,
    cepd_resnet50,
    input_array,
    sessions,
    time_interleaved,
)

import cepd_deploy as cd  # noqa: E402
from cepd_deploy import native  # noqa: E402
from cepd_deploy.bench.machine import describe, machine_info  # noqa: E402


def layer_split(plan_flops: float, threads: int, rank_multiple: int, allocation: str,
                top: int = 8) -> list[dict]:  # fmt: skip
    """Per-layer kernel time from an onnxruntime profile of the portable model."""
    import onnxruntime as ort

    from cepd_deploy.targets.onnx import prepare, session_options, to_model

    plan = cd.lower(cepd_resnet50(plan_flops, rank_multiple, allocation, threads), SHAPE)
    so = session_options(threads)
    so.enable_profiling = True
    model = to_model(prepare(plan)).SerializeToString()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    x = input_array()
    for _ in range(10):
        sess.run(None, {plan.input: x})
    path = sess.end_profiling()
    events = json.load(open(path))
    os.unlink(path)
    # onnxruntime keeps our node names ("<plan node>/<op>") or, for nodes it rewrites, names
    # them after their output value ("<value>_nchwc"): map both back to Plan nodes and layers
    by_name = {n.name: n for n in plan.nodes}
    by_value = {n.output: n for n in plan.nodes}
    per: dict[str, Counter] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        base = e["name"][: -len("_kernel_time")].split("/")[0].removesuffix("_nchwc")
        node = by_name.get(base) or by_value.get(base)
        layer = node.layer if node is not None and node.layer in plan.layers else "other"
        op = e["args"]["op_name"]
        key = f"{node.name.removeprefix(layer + '.')}:{op}" if node is not None else op
        per.setdefault(layer, Counter())[key] += e["dur"] / 10 / 1e3
    rows = [{"layer": k, "ms": round(sum(c.values()), 3), "split_ms": {p: round(v, 3) for p, v in c.items()},
             "ranks": list(plan.layers[k].ranks) if k in plan.layers else [],
             "kappa": plan.layers[k].kappa if k in plan.layers else 0}
            for k, c in per.items()]  # fmt: skip
    return sorted(rows, key=lambda r: -r["ms"])[:top]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="benchmarks/out/onnx_resnet50.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rank-multiple", type=int, default=1, help="for the uniform allocation")
    p.add_argument("--allocations", nargs="+", choices=ALLOCATIONS, default=list(ALLOCATIONS))
    p.add_argument("--no-torch", action="store_true", help="skip the eager torch rows")
    p.add_argument("--no-native", action="store_true", help="skip the native-kernel rows")
    args = p.parse_args()
    machine = machine_info(args.threads)  # before the conversions load the machine
    print(f"measured on: {describe(machine)}", flush=True)
    torch.set_num_threads(args.threads)
    use_native = not args.no_native and native.available()
    if use_native:
        native.set_threads(args.threads)
    x = input_array()
    sess = sessions(POINTS, args.threads, args.rank_multiple, native=use_native, allocations=args.allocations)
    runs = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, (s, _) in sess.items()}
    flops = {k: fr for k, (_, fr) in sess.items()}
    if not args.no_torch:
        xt = torch.from_numpy(x)
        models = {"dense": cd.build_model("resnet50").eval()}
        alloc = args.allocations[0]
        for f in POINTS:
            models[f"cepd{f:.1%}-{alloc}"] = cepd_resnet50(f, args.rank_multiple, alloc, args.threads).eval()
            if use_native:
                model = cepd_resnet50(f, args.rank_multiple, alloc, args.threads).eval()
                models[f"cepd{f:.1%}-{alloc}-native"] = native.accelerate(model)
        for k, m in models.items():
            runs[f"torch-{k}"] = lambda m=m: m(xt)
            flops[f"torch-{k}"] = flops["dense" if k == "dense" else f"{k.removesuffix('-native')}-portable"]
    with torch.no_grad():
        wall, cpu = time_interleaved(runs, args.repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rows = []
    for k, ms in med.items():
        dense = "torch-dense" if k.startswith("torch-") else "dense"
        speedup, cpu_speedup = med[dense] / ms, med_cpu[dense] / med_cpu[k]
        rows.append({"name": k, "median_ms": round(ms, 2), "flops_remaining": round(flops[k], 4),
                     "speedup": round(speedup, 3), "ideal_fraction": round(speedup * flops[k], 3),
                     "meets_0.85_ideal": speedup * flops[k] >= 0.85, "median_cpu_ms": round(med_cpu[k], 2),
                     "cpu_speedup": round(cpu_speedup, 3),
                     "cpu_ideal_fraction": round(cpu_speedup * flops[k], 3)})  # fmt: skip
    result = {"threads": args.threads, "batch": 1, "shape": list(SHAPE), "repeats": args.repeats,
              "rank_multiple": args.rank_multiple, "machine": machine, "load_avg_end": os.getloadavg(),
              "rows": rows,
              "native_isa": native.isa() if use_native else None,
              "slowest_layers_46.1%": {a: layer_split(0.461, args.threads, args.rank_multiple, a)
                                       for a in args.allocations}}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"measured on: {describe(machine)}")
    for r in rows:
        print(f"{r['name']:40s} {r['median_ms']:8.2f} ms  x{r['speedup']:.2f}  "
              f"{r['ideal_fraction']:.0%} of FLOPs ideal (FLOPs {r['flops_remaining']:.1%})  |  "
              f"cpu {r['median_cpu_ms']:8.2f} ms  x{r['cpu_speedup']:.2f}  {r['cpu_ideal_fraction']:.0%}")


if __name__ == "__main__":
    from cepd_deploy.cli.common import reexec_on_hugepages

    reexec_on_hugepages([__file__, *sys.argv[1:]])  # steadier latency (see the README)
    main()
