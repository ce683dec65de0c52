"""pytest-benchmark view of the latency table: dense vs CEPD ResNet-50 per target.

    python -m pytest benchmarks/test_latency_table.py --benchmark-only --benchmark-group-by=group

Measured targets (onnxruntime, onnxruntime-fused, torch) are timed by pytest-benchmark; modelled
targets (pynq-z1, eyeriss) record their modelled latency in ``extra_info`` (the timing is then
that of the cost model itself). For speedup ratios on a shared machine prefer
``cepd-deploy bench``, which interleaves dense and CEPD in one loop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from cepd_deploy.bench.adapters import measured, modelled_ms, runner
from cepd_deploy.bench.harness import build_variants
from cepd_deploy.bench.paper import POINTS

TARGETS = ("pynq-z1", "eyeriss", "onnxruntime", "onnxruntime-fused", "torch")
LABELS = ["dense"] + [f"cepd{round(f * 1000)}" for f in POINTS]


@pytest.fixture(scope="module")
def variants():
    return {v.label: v for v in build_variants("resnet50", POINTS, progress=False)}


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="cepd-bench-") as tmp:
        yield Path(tmp)


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("target", TARGETS)
def test_resnet50(benchmark, variants, workdir, target, label):
    v = variants[label]
    benchmark.group = f"resnet50 {target}"
    benchmark.extra_info.update(flops_remaining=v.flops_remaining, params_remaining=v.params_remaining)
    if not measured(target):
        options = {"spec": "eyeriss_scaled"} if target == "eyeriss" else None  # the paper's scale
        ms, _ = benchmark.pedantic(modelled_ms, args=(target, v.plan, options), rounds=1, iterations=1)
        benchmark.extra_info["modelled_latency_ms"] = ms
        assert ms > 0
        return
    fn = runner(target, v.plan, 2, workdir)
    x = np.random.default_rng(0).standard_normal(v.plan.input_shape).astype(np.float32)
    benchmark.pedantic(fn, args=(x,), rounds=10, iterations=1, warmup_rounds=2)
