"""The models and sessions of the ONNX benchmark: dense ResNet-50 vs CEPD at three FLOPs points.

CEPD models come from ``convert`` (direct method, sparsity 0.9, o-k-i) and are cached under
``benchmarks/out/``. Allocations of the same FLOPs target: ``uniform`` (one cost ratio for
every layer, ranks in multiples of ``rank_multiple``), ``ort-latency`` and ``library-latency``
(the layers and ranks with the least measured latency on this machine, on stock onnxruntime or
on the custom-op library, ranks in multiples of 16, see ``cepd_deploy.frontend.allocation``;
the first run measures every layer option, under a minute each).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import cepd_deploy as cd
from cepd_deploy.frontend.allocation import ALLOCATIONS, TAGS, allocation_kwargs
from cepd_deploy.native import available as native_available
from cepd_deploy.plan.cost import totals
from cepd_deploy.targets.onnx import build_session, prepare, to_model

POINTS = (0.663, 0.461, 0.371)
SHAPE = (1, 3, 224, 224)
CACHE = Path(__file__).resolve().parent / "out"


def cepd_resnet50(flops: float, rank_multiple: int = 1, allocation: str = "uniform", threads: int = 2):
    """A CEPD ResNet-50 at a FLOPs target (cached on disk)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    kw = allocation_kwargs(allocation, threads) or {"rank_multiple": rank_multiple}
    name = f"{TAGS[allocation]}{threads}" if TAGS[allocation] else f"r{rank_multiple}"
    path = CACHE / f"resnet50_f{flops:.3f}_{name}.pt"
    if path.exists():
        return cd.load(path)
    model = cd.convert(cd.build_model("resnet50"), flops_remaining=flops, input_shape=SHAPE, **kw)
    cd.save(model, path, input_shape=SHAPE[1:])
    return model


def sessions(points=POINTS, threads: int = 2, rank_multiple: int = 1, native: bool = True,
             allocations=ALLOCATIONS) -> dict:  # fmt: skip
    """name -> (session, flops remaining): dense, then per allocation and point CEPD portable,
    fused (function bodies on stock onnxruntime) and, with ``native``, fused on the native kernel."""
    dense = cd.lower(cd.build_model("resnet50").eval(), SHAPE)
    out = {"dense": (build_session(to_model(prepare(dense)), threads), 1.0)}
    for alloc in allocations:
        for f in points:
            plan = cd.lower(cepd_resnet50(f, rank_multiple, alloc, threads), SHAPE)
            fr = totals(plan)["flops_remaining"]
            fused = to_model(prepare(plan), fused=True)
            out[f"cepd{f:.1%}-{alloc}-portable"] = (build_session(to_model(prepare(plan)), threads), fr)
            out[f"cepd{f:.1%}-{alloc}-fused"] = (build_session(fused, threads), fr)
            if native and native_available():
                out[f"cepd{f:.1%}-{alloc}-fused-native"] = (build_session(fused, threads, native=True), fr)
    return out


def time_interleaved(runs: dict, repeats: int = 20, warmup: int = 3) -> tuple[dict, dict]:
    """Wall and process-CPU times (ms) of every callable, once per round, rounds interleaved.

    CPU time (all threads of the process) is what a run costs whatever else the machine runs;
    on a shared machine it is the steadier figure, wall time the one users see.
    """
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append((time.perf_counter() - t) * 1e3)
            cpu[k].append((time.process_time() - c) * 1e3)
    return wall, cpu


def input_array(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
