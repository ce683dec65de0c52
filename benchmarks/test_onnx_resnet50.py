"""pytest-benchmark: dense vs CEPD ResNet-50 on onnxruntime (2 threads, batch 1, 224x224).

    python -m pytest benchmarks/test_onnx_resnet50.py --benchmark-group-by=group

Rows are timed one after another here; ``onnx_resnet50.py`` interleaves them in one run and
writes the JSON table (use it for speedup ratios on a shared machine).
"""

from __future__ import annotations

import pytest
from onnx_cases import ALLOCATIONS, POINTS, input_array, sessions

KINDS = ("portable", "fused", "fused-native")
NAMES = ["dense"] + [f"cepd{f:.1%}-{a}-{kind}" for a in ALLOCATIONS for f in POINTS for kind in KINDS]


@pytest.fixture(scope="module")
def all_sessions():
    return sessions(POINTS, threads=2)


@pytest.mark.parametrize("name", NAMES)
def test_resnet50_onnxruntime(benchmark, all_sessions, name):
    if name not in all_sessions:
        pytest.skip("the native kernel library is not built (no C++ compiler at install)")
    sess, flops = all_sessions[name]
    x = input_array()
    feed = {sess.get_inputs()[0].name: x}
    benchmark.group = "resnet50-onnxruntime"
    benchmark.extra_info["flops_remaining"] = flops
    out = benchmark.pedantic(sess.run, args=(None, feed), rounds=10, warmup_rounds=2)
    assert out[0].shape == (1, 1000)
