"""``run_bench``: dense baseline + CEPD models at FLOPs points, on every target, one table.

The Plans are lowered for a batch of ``batch`` images; every target runs (or models) the whole
batch, and each row gives the batch's latency and the throughput (images/s). Measured targets
time dense and CEPD interleaved in the same loop (warm-up, then the median of ``repeats``
rounds), so machine noise hits every model alike; in a round each model runs twice in a row and
the second run is timed, so it is the steady state of back-to-back runs (the model's weights and
buffers in the caches), not a run after another model's; every measured row records the machine
(``bench.machine.machine_info`` at the start of the run: CPU, kernel build, threads, load
average) and, where the runtime loads an artifact (onnxruntime, TVM), its peak resident memory
on that model, measured in a process of its own (``bench.memory``). Modelled targets evaluate
their cost model on the same Plans. Every FLOPs figure comes from the Plan.
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
from cepd_deploy.targets import get as get_target

#: the target whose CEPD models run their measured dense stages (as ``export --fused`` writes them)
FUSED_RUNTIME = "onnxruntime-native"


@dataclass
class Row:
    """One line of the bench table: a model variant's latency (ms) for one batch of ``batch`` images
    on one target (per image at batch 1), its throughput, its speedup over the dense row of that
    target, its peak memory where measured and the paper's figures (batch 1) where it has them."""

    model: str
    flops_remaining: float
    target: str
    kind: str  # "measured" or "modelled"
    latency_ms: float  # one run of the whole batch
    speedup: float = 1.0
    ideal_fraction: float = 1.0  # speedup x FLOPs remaining (1.0 = the FLOPs ideal)
    paper_latency_ms: float | None = None
    paper_speedup: float | None = None
    params_remaining: float = 1.0
    batch: int = 1
    throughput: float = 0.0  # images per second: batch x 1000 / latency_ms
    peak_rss_mb: float | None = None  # the runtime's process running this model: peak resident set
    model_rss_mb: float | None = None  # that peak minus the process's resident set before the model loaded
    details: dict = field(default_factory=dict)
    machine: dict | None = None  # measured rows: where (``bench.machine.machine_info``)

    def __post_init__(self) -> None:
        if not self.throughput and self.latency_ms > 0:
            self.throughput = self.batch * 1e3 / self.latency_ms

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
    model: object = None  # the nn.Module (lowered again where a target runs some layers dense)
    #: target -> the dense stages measured there (``DenseStages``: the layers and the Plan to run)
    runs: dict = field(default_factory=dict)

    def plan_for(self, target: str):
        """The Plan ``target`` runs: :attr:`plan`, or the one with its measured dense stages."""
        return self.runs[target].plan if target in self.runs else self.plan

    def options_for(self, target: str) -> dict:
        """``target``'s options: the layers its measured choice leaves to onnxruntime, if any."""
        return {"standard_layers": self.runs[target].standard} if target in self.runs else {}


def build_variants(arch: str, points, *, batch: int = 1, progress: bool = True,
                   allocation: str = "uniform", threads: int = 2, source: dict | None = None,
                   ) -> list[Variant]:  # fmt: skip
    """The dense model and one CEPD conversion per FLOPs point, with their Plans.

    ``arch``: a zoo name, a network ``MODULE:ATTR`` or a model file; ``source``: the keyword
    arguments of ``model.format.resolve`` (input shape, network arguments, trust). ``allocation``:
    "uniform" (``convert``'s default), "ort-latency" or "library-latency" (the least measured
    latency at ``threads`` threads on stock onnxruntime or on the custom-op library; labels get a
    ``-lat`` / ``-lib`` suffix).
    """
    if Path(arch).is_file():
        return _file_variants(Path(arch), batch, source or {})
    from cepd_deploy import convert, lower
    from cepd_deploy.frontend.allocation import TAGS, allocation_kwargs
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.cost import totals

    kw = allocation_kwargs(allocation, threads, progress=progress)
    suffix = f"-{TAGS[allocation]}" if TAGS[allocation] else ""
    base, one, _ = resolve(arch, **(source or {}))
    shape = (batch, *one[1:])
    out = []
    for f in tqdm([1.0, *points], desc=f"convert {arch}", disable=not progress, unit="model"):
        model = base if f >= 1.0 else convert(base, flops_remaining=f, input_shape=shape, **kw)
        plan = lower(model, shape)
        t = totals(plan)
        label = "dense" if f >= 1.0 else f"cepd{round(f * 1000)}{suffix}"
        out.append(Variant(label, f, plan, t["flops_remaining"], t["params_remaining"], model))
    return out


def _file_variants(path: Path, batch: int, source: dict) -> list[Variant]:
    """A CEPD model file and the dense architecture it records (zoo or network reference), as the
    two variants."""
    from cepd_deploy.frontend.load import load_plan
    from cepd_deploy.model.format import dense_architecture
    from cepd_deploy.plan.cost import totals

    cepd = load_plan(path, batch=batch, **source)
    base = dense_architecture(cepd.model)
    if base is None:
        raise CEPDError(f"{path}: bench compares a model with its dense architecture, and this file "
                        "records none; name it with --template MODULE:ATTR")  # fmt: skip
    dense = load_plan(base, cepd.plan.input_shape[1:], batch=batch)
    out = []
    for label, loaded in (("dense", dense), ("cepd", cepd)):
        t = totals(loaded.plan)
        f = t["flops_remaining"]
        out.append(Variant(label, f, loaded.plan, f, t["params_remaining"], loaded.model))
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
    source: dict | None = None,
    batch: int = 1,
    memory: bool = False,
    pynq_bits: int = 16,
    dense_stages: bool = True,
) -> list[Row]:
    """Latency rows for every (model variant, target); speedups against the dense row. ``source``:
    how ``arch`` is loaded (see :func:`build_variants`). Every run is of ``batch`` images (rows
    give the throughput too); with ``memory`` (``cepd-deploy bench`` sets it unless --no-memory),
    each measured runtime's peak memory on each model (``bench.memory``: onnxruntime and TVM).
    ``pynq_bits``: the PYNQ-Z1 engine's data width (8 or fewer: the packed 8-bit engine). With
    ``dense_stages``, a CEPD model on ``onnxruntime-native`` runs what ``export --fused`` writes:
    the stages measured faster dense there run dense (:mod:`~cepd_deploy.frontend.dense_stages`);
    its rows keep the model's FLOPs remaining."""
    valid = bench_targets()
    unknown = [t for t in targets if t not in valid]
    if unknown:
        raise CEPDError(f"unknown bench target {unknown[0]!r}; valid: {', '.join(valid)}")
    if any(not 0 < f < 1 for f in points):
        raise CEPDError("FLOPs points must lie in (0, 1)")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CEPDError(f"the batch must be a whole number >= 1, got {batch!r}")
    options = {"eyeriss": {"spec": eyeriss_spec}, "pynq-z1": {"bits": pynq_bits}}
    if "pynq-z1" in targets:
        get_target("pynq-z1").options(options["pynq-z1"])  # a bad --pynq-bits fails before the models load
    machine = machine_info(threads)  # the load average before this run loads the machine
    variants = build_variants(arch, points, progress=progress, allocation=allocation, threads=threads,
                              source=source, batch=batch)  # fmt: skip
    # rows are named "<arch>-<variant>" (a network MODULE:ATTR by its ATTR)
    arch = Path(arch).stem if Path(arch).is_file() else arch.rpartition(":")[2]
    rows: list[Row] = []
    for target in [t for t in targets if not measured(t)]:
        for v in tqdm(variants, desc=target, disable=not progress, unit="model"):
            ms, details = modelled_ms(target, v.plan, options.get(target))
            rows.append(_row(arch, v, target, "modelled", ms, details))
    timed = [t for t in targets if measured(t)]
    if dense_stages and FUSED_RUNTIME in timed:
        _measure_dense_stages(variants, threads, progress)
    if timed:
        rows += _measure(arch, variants, timed, threads, repeats, warmup, progress, memory)
        for r in rows:
            if r.kind == "measured":
                r.machine = machine
    _speedups(rows)
    return rows


def _measure(arch, variants, targets, threads, repeats, warmup, progress, memory=True) -> list[Row]:
    shape = variants[0].plan.input_shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="cepd-bench-") as tmp:
        runners = {}
        for target in targets:
            for v in tqdm(variants, desc=f"prepare {target}", disable=not progress, unit="model"):
                plan, options = v.plan_for(target), v.options_for(target)
                work = _workdir(tmp, target, v.label)
                runners[(target, v.label)] = runner(target, plan, threads, work, options)
        times = {key: [] for key in runners}
        cpu = {key: [] for key in runners}  # process CPU time (all threads): steadier on a shared machine
        for _ in range(warmup):
            for fn in runners.values():
                fn(x)
        for _ in tqdm(range(repeats), desc="timing (interleaved)", disable=not progress, unit="round"):
            for key, fn in runners.items():
                fn(x)  # untimed: the timed run then finds the model warm, as back-to-back runs do
                t0, c0 = time.perf_counter(), time.process_time()
                fn(x)
                times[key].append((time.perf_counter() - t0) * 1e3)
                cpu[key].append((time.process_time() - c0) * 1e3)
        if memory:  # one process per (runtime, model), one after the other, after the timing
            from cepd_deploy.bench.memory import measure

            for target, label in tqdm(list(runners), desc="peak memory", disable=not progress, unit="model"):
                peaks[(target, label)] = measure(target, _workdir(tmp, target, label), shape, threads)
    by_label = {v.label: v for v in variants}
    rows = []
    for (target, label), ts in times.items():
        details = {"repeats": repeats, "threads": threads, "min_ms": min(ts), "max_ms": max(ts),
                   "cpu_ms": statistics.median(cpu[(target, label)])}  # fmt: skip
        if target in by_label[label].runs:
            details["dense_stages"] = by_label[label].runs[target].to_json()
        row = _row(arch, by_label[label], target, "measured", statistics.median(ts), details)
        peak = peaks.get((target, label), {})
        row.peak_rss_mb, row.model_rss_mb = peak.get("peak_rss_mb"), peak.get("model_rss_mb")
        if peak:
            details["memory"] = peak
        rows.append(row)
    return rows


def _measure_dense_stages(variants: list[Variant], threads: int, progress: bool) -> None:
    """Fill each CEPD variant's run on the library target with its measured dense stages."""
    from cepd_deploy.frontend.dense_stages import dense_stages
    from cepd_deploy.targets.onnx import ort_library

    if not ort_library.available():  # the target runs the extensions path: no stages measured
        return
    for v in variants:
        if v.label == "dense" or v.model is None:
            continue
        v.runs[FUSED_RUNTIME] = dense_stages(v.model, v.plan.input_shape, FUSED_RUNTIME, threads=threads,
                                             progress=progress)  # fmt: skip


def _workdir(tmp: str, target: str, label: str) -> Path:
    """Where the runner of (target, variant) writes its artifact (the memory measurement loads it)."""
    return Path(tmp) / target / label


def _row(arch, v: Variant, target: str, kind: str, ms: float, details: dict) -> Row:
    batch = int(v.plan.input_shape[0]) if v.plan is not None else 1
    paper = batch == 1  # the paper's figures are per image, at batch 1
    return Row(model=f"{arch}-{v.label}", flops_remaining=round(v.flops_remaining, 4), target=target,
               kind=kind, latency_ms=ms,
               paper_latency_ms=paper_latency(target, v.target_flops, arch) if paper else None,
               paper_speedup=paper_speedup(target, v.target_flops, arch) if paper else None,
               params_remaining=round(v.params_remaining, 4), batch=batch, details=details)  # fmt: skip


def _speedups(rows: list[Row]) -> None:
    dense = {r.target: r.latency_ms for r in rows if r.model.endswith("-dense")}
    for r in rows:
        r.speedup = dense[r.target] / r.latency_ms
        r.ideal_fraction = r.speedup * r.flops_remaining
