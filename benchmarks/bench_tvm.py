"""TVM vs onnxruntime on dense and CEPD ResNet-50 (batch 1, 224x224, one process, interleaved).

    python benchmarks/bench_tvm.py -o benchmarks/out/tvm_resnet50.json [--tune-trials 8 16]
    pytest benchmarks/bench_tvm.py --benchmark-only          # the pytest-benchmark view

Rows: TVM untuned (our schedules), TVM tuned (``--tune-trials``: MetaSchedule per distinct
contraction kernel, cached under $CEPD_DEPLOY_CACHE; several values give a latency-vs-trials
curve, the cache accumulating), ORT portable, ORT fused (function bodies) and, when the native
TTSparseConv kernel is built, ORT fused+native. All runtimes get ``--threads`` threads; rounds
are interleaved so load changes hit every row alike; median and min wall ms are reported, with
the machine (CPU, kernel build, threads, load average at start; ``cepd_deploy.bench.machine``).
CEPD models come from ``convert`` (direct method, sparsity 0.9, o-k-i), cached in
``benchmarks/out/resnet50_f<flops>_m1.pt`` (shared with the ONNX benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cepd_deploy as cd
from cepd_deploy.bench.machine import describe, machine_info
from cepd_deploy.process import configure

POINTS = (0.663, 0.461, 0.371)
SHAPE = (1, 3, 224, 224)
CACHE = Path(__file__).resolve().parent / "out"


def cepd_resnet50(flops: float):
    """A CEPD ResNet-50 at a FLOPs target (converted once, then loaded from the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"resnet50_f{flops:.3f}_m1.pt"
    if path.exists():
        return cd.load(path).eval()
    model = cd.convert(cd.build_model("resnet50"), flops_remaining=flops, input_shape=SHAPE)
    cd.save(model, path, input_shape=SHAPE[1:])
    return model.eval()


def models(points=POINTS) -> dict[str, object]:
    out = {"dense": cd.build_model("resnet50").eval()}
    out.update({f"cepd{f:.1%}": cepd_resnet50(f) for f in points})
    return out


def tvm_runner(plan, threads: int, workdir: Path, tune_trials: int = 0):
    """(callable on a TVM tensor, build manifest) for ``plan``, built by the TVM Target (its passes
    first; tuning progress on stderr)."""
    import tvm

    from cepd_deploy.targets import tvm as tvm_target

    out = Path(tempfile.mkdtemp(dir=workdir))
    opts = tvm_target.TVM.Options(verify=True, tune_trials=tune_trials, threads=threads)
    manifest = tvm_target.TVM().build(plan, out, opts).figures
    model = tvm_target.load(out, threads=threads)
    x = tvm.runtime.tensor(input_array(), model.device)
    return (lambda: model.run_tensor(x)), manifest


def ort_runners(plan, threads: int) -> dict:
    from cepd_deploy import native
    from cepd_deploy.targets.onnx import build_session, prepare, to_model

    x = input_array()
    plan = prepare(plan)  # the onnxruntime targets' passes
    sessions = {"ort-portable": build_session(to_model(plan), threads)}
    if any(n.op.value == "scatter_add" for n in plan.nodes):  # a CEPD plan: the fused export
        fused = to_model(plan, fused=True)
        sessions["ort-fused"] = build_session(fused, threads)
        if native.available():
            sessions["ort-fused-native"] = build_session(fused, threads, native=True)
    return {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}


def input_array(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def time_interleaved(runs: dict, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="benchmarks/out/tvm_resnet50.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--points", type=float, nargs="*", default=list(POINTS))
    p.add_argument(
        "--tune-trials",
        type=int,
        nargs="*",
        default=[],
        help="trials per kernel; several values (ascending) give a latency-vs-trials curve",
    )
    p.add_argument("--tune-models", nargs="*", default=["cepd46.1%"], help="which models to tune")
    args = p.parse_args()
    machine = machine_info(args.threads)  # before the builds load the machine
    print(f"measured on: {describe(machine)}", flush=True)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    configure()  # OMP_WAIT_POLICY=PASSIVE unless set, before torch loads (cepd_deploy.process)
    import torch

    torch.set_num_threads(args.threads)
    from cepd_deploy.plan.cost import totals

    work = Path(tempfile.mkdtemp(prefix="bench-tvm-"))
    runs, info, tuning = {}, {}, []
    for name, model in models(args.points).items():
        plan = cd.lower(model, SHAPE)
        info[name] = {"flops_remaining": totals(plan)["flops_remaining"], "macs": totals(plan)["macs"]}
        runs[f"{name}/tvm"], man = tvm_runner(plan, args.threads, work)
        info[name]["tvm_kernels"] = man["kernels"]
        for trials in sorted(args.tune_trials) if name in args.tune_models else []:
            t0 = time.perf_counter()
            runs[f"{name}/tvm-tuned{trials}"], man = tvm_runner(plan, args.threads, work, trials)
            tuning.append(
                {
                    "model": name,
                    "trials_per_kernel": trials,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "tuned_kernels": man["tuned_kernels"],
                    "kernels": man["kernels"],
                }
            )
            print(f"tuned {name} to {trials} trials/kernel in {tuning[-1]['wall_s']} s", flush=True)
        for k, fn in ort_runners(plan, args.threads).items():
            runs[f"{name}/{k}"] = fn
    load_before = os.getloadavg()
    with torch.no_grad():
        times = time_interleaved(runs, args.repeats)
    rows = []
    for key, ts in times.items():
        name, runtime = key.split("/")
        rows.append(
            {
                "model": name,
                "runtime": runtime,
                "median_ms": round(statistics.median(ts), 2),
                "min_ms": round(min(ts), 2),
                **info[name],
            }
        )
    for r in rows:  # ratios inside one model: vs its best onnxruntime row, vs ORT fused
        mine = {q["runtime"]: q["median_ms"] for q in rows if q["model"] == r["model"]}
        r["vs_best_ort"] = round(r["median_ms"] / min(v for k, v in mine.items() if k.startswith("ort")), 3)
        if "ort-fused" in mine:
            r["vs_ort_fused"] = round(r["median_ms"] / mine["ort-fused"], 3)
    result = {
        "threads": args.threads,
        "batch": 1,
        "shape": list(SHAPE),
        "repeats": args.repeats,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "tuning": tuning,
        "cpu": _cpu(),
        "machine": machine,
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    head = ("model", "runtime", "median ms", "min ms", "/best ORT", "/ORT fused")
    print(f"measured on: {describe(machine)}")
    print("{:12s} {:18s} {:>10s} {:>8s} {:>10s} {:>10s}".format(*head))
    for r in rows:
        ms = f"{r['median_ms']:10.2f} {r['min_ms']:8.2f}"
        fused = f"{r['vs_ort_fused']:10.2f}" if "vs_ort_fused" in r else f"{'-':>10s}"
        print(f"{r['model']:12s} {r['runtime']:18s} {ms} {r['vs_best_ort']:10.2f} {fused}")
    print(f"load average before/after: {load_before} / {result['load_avg_after']}")


def _cpu() -> dict:
    from cepd_deploy.targets.tvm.host import describe

    return describe("llvm")


# -- pytest-benchmark view (not collected by the test suite: testpaths = tests) --------------
def test_tvm_cepd_resnet50(benchmark, tmp_path):
    fn, _ = tvm_runner(cd.lower(cepd_resnet50(0.461), SHAPE), 2, tmp_path)
    benchmark(fn)


def test_ort_fused_cepd_resnet50(benchmark):
    benchmark(ort_runners(cd.lower(cepd_resnet50(0.461), SHAPE), 2)["ort-fused"])


if __name__ == "__main__":
    from cepd_deploy.cli.common import reexec_on_hugepages

    reexec_on_hugepages([__file__, *sys.argv[1:]])  # steadier latency (see the README)
    main()
