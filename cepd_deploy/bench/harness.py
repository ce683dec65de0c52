"""``run_bench``: dense baseline + CEPD models at FLOPs points, on every target, one table.

Measured targets time dense and CEPD interleaved in the same loop (warm-up, then the median of
``repeats`` rounds), so machine noise hits every model alike; every measured row records the
machine (``bench.machine.machine_info`` at the start of the run: CPU, kernel build, threads, load
average). Modelled targets evaluate their cost model on the same Plans. Every FLOPs figure comes
from the Plan.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cepd_deploy.bench.adapters import bench_targets, measured, modelled_ms, runner
from cepd_deploy.bench.machine import machine_info
from cepd_deploy.bench.paper import paper_latency, paper_speedup
from cepd_deploy.errors import CEPDError


@dataclass
class Row:
    """One line of the bench table: a model variant's per-image latency (ms) on one target, with
    its speedup over the dense row of that target and the paper's figures where it has them."""

    model: str
    flops_remaining: float
    target: str
    kind: str  # "measured" or "modelled"
    latency_ms: float
    speedup: float = 1.0
    ideal_fraction: float = 1.0  # speedup x FLOPs remaining (1.0 = the FLOPs ideal)
    paper_latency_ms: float | None = None
    paper_speedup: float | None = None
    params_remaining: float = 1.0
    details: dict = field(default_factory=dict)
    machine: dict | None = None  # measured rows: where (``bench.machine.machine_info``)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Variant:
    """A model bench times (the dense model or one CEPD conversion) as its Plan, with its FLOPs
    and params remaining (fractions of dense)."""

    label: str
    target_flops: float
    plan: object
    flops_remaining: float
    params_remaining: float


def build_variants(arch: str, points, *, batch: int = 1, progress: bool = True,
                   allocation: str = "uniform", threads: int = 2) -> list[Variant]:  # fmt: skip
    """The dense model and one CEPD conversion per FLOPs point, with their Plans.

    ``allocation``: "uniform" (``convert``'s default), "ort-latency" or "library-latency" (the
    least measured latency at ``threads`` threads on stock onnxruntime or on the custom-op
    library; labels get a ``-lat`` / ``-lib`` suffix).
    """
    if Path(arch).is_file():
        return _file_variants(Path(arch), batch)
    from cepd_deploy import build_model, convert, lower
    from cepd_deploy.frontend.allocation import TAGS, allocation_kwargs
    from cepd_deploy.model.zoo import input_shape
    from cepd_deploy.plan.cost import totals

    kw = allocation_kwargs(allocation, threads)
    suffix = f"-{TAGS[allocation]}" if TAGS[allocation] else ""
    shape = (batch, *input_shape(arch))
    base = build_model(arch).eval()
    out = []
    for f in tqdm([1.0, *points], desc=f"convert {arch}", disable=not progress, unit="model"):
        model = base if f >= 1.0 else convert(base, flops_remaining=f, input_shape=shape, **kw)
        plan = lower(model, shape)
        t = totals(plan)
        label = "dense" if f >= 1.0 else f"cepd{round(f * 1000)}{suffix}"
        out.append(Variant(label, f, plan, t["flops_remaining"], t["params_remaining"]))
    return out


def _file_variants(path: Path, batch: int) -> list[Variant]:
    """A CEPD model file and the dense zoo architecture it records, as the two variants."""
    from cepd_deploy.frontend.load import load_plan
    from cepd_deploy.model.zoo import ZOO, build_model
    from cepd_deploy.plan.cost import totals

    cepd = load_plan(path, batch=batch)
    arch = (getattr(cepd.model, "cepd_arch", None) or {}).get("name")
    if arch not in ZOO:
        raise CEPDError(f"{path}: bench compares a model with its dense zoo architecture, and "
                        "this file records none (a custom network); time it with a target's runner")
    dense = load_plan(build_model(arch).eval(), cepd.plan.input_shape[1:], batch=batch)
    out = []
    for label, loaded in (("dense", dense), ("cepd", cepd)):
        t = totals(loaded.plan)
        f = t["flops_remaining"]
        out.append(Variant(label, f, loaded.plan, f, t["params_remaining"]))
    return out


def run_bench(
    arch: str = "resnet50",
    points=(0.663, 0.461, 0.371),
    targets=("pynq-z1", "eyeriss", "onnxruntime", "torch"),
    *,
    threads: int = 2,
    repeats: int = 15,
    warmup: int = 3,
    eyeriss_spec: str = "eyeriss_scaled",
    progress: bool = True,
    allocation: str = "uniform",
) -> list[Row]:
    """Latency rows for every (model variant, target); speedups against the dense row."""
    valid = bench_targets()
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise CEPDError(f"unknown bench target {unknown[0]!r}; valid: {', '.join(valid)}")
    if any(not 0 < f < 1 for f in points):
        raise CEPDError("FLOPs points must lie in (0, 1)")
    machine = machine_info(threads)  # the load average before this run loads the machine
    variants = build_variants(arch, points, progress=progress, allocation=allocation, threads=threads)
    arch = Path(arch).stem if Path(arch).is_file() else arch  # rows are named "<arch>-<variant>"
    rows: list[Row] = []
    options = {"eyeriss": {"spec": eyeriss_spec}}
    for target in [t for t in targets if not measured(t)]:
        for v in tqdm(variants, desc=target, disable=not progress, unit="model"):
            ms, details = modelled_ms(target, v.plan, options.get(target))
            rows.append(_row(arch, v, target, "modelled", ms, details))
    timed = [t for t in targets if measured(t)]
    if timed:
        rows += _measure(arch, variants, timed, threads, repeats, warmup, progress)
        for r in rows:
            if r.kind == "measured":
                r.machine = machine
    _speedups(rows)
    return rows


def _measure(arch, variants, targets, threads, repeats, warmup, progress) -> list[Row]:
    x = np.random.default_rng(0).standard_normal(variants[0].plan.input_shape).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="cepd-bench-") as tmp:
        runners = {}
        for target in targets:
            for v in tqdm(variants, desc=f"prepare {target}", disable=not progress, unit="model"):
                runners[(target, v.label)] = runner(target, v.plan, threads, Path(tmp))
        times = {key: [] for key in runners}
        for _ in range(warmup):
            for fn in runners.values():
                fn(x)
        for _ in tqdm(range(repeats), desc="timing (interleaved)", disable=not progress, unit="round"):
            for key, fn in runners.items():
                t0 = time.perf_counter()
                fn(x)
                times[key].append((time.perf_counter() - t0) * 1e3)
    by_label = {v.label: v for v in variants}
    rows = []
    for (target, label), ts in times.items():
        details = {"repeats": repeats, "threads": threads, "min_ms": min(ts), "max_ms": max(ts)}
        rows.append(_row(arch, by_label[label], target, "measured", statistics.median(ts), details))
    return rows


def _row(arch, v: Variant, target: str, kind: str, ms: float, details: dict) -> Row:
    return Row(model=f"{arch}-{v.label}", flops_remaining=round(v.flops_remaining, 4), target=target,
               kind=kind, latency_ms=ms, paper_latency_ms=paper_latency(target, v.target_flops, arch),
               paper_speedup=paper_speedup(target, v.target_flops, arch),
               params_remaining=round(v.params_remaining, 4), details=details)  # fmt: skip


def _speedups(rows: list[Row]) -> None:
    dense = {r.target: r.latency_ms for r in rows if r.model.endswith("-dense")}
    for r in rows:
        r.speedup = dense[r.target] / r.latency_ms
        r.ideal_fraction = r.speedup * r.flops_remaining
