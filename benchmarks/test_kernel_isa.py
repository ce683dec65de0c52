"""pytest-benchmark: CEPD ResNet-50 layers on the native kernel, per instruction-set build.

    python -m pytest benchmarks/test_kernel_isa.py --benchmark-only --benchmark-group-by=param:layer

One layer of each kind from the 37.1% ResNet-50 (uniform allocation): a pointwise 14x14 layer
with its residual, a 3x3 28x28 one with a Winograd sparse branch, a stride-2 3x3 one. Each is
timed on every build this CPU runs (avx512f, avx2, scalar; 2 threads), GMAC/s in
``extra_info``. The tests check every build's numerics, not its speed: the AVX2 build once gave
correct results 60x slower than the AVX-512 one. Compare builds within one run.
"""

from __future__ import annotations

import numpy as np
import pytest

import cepd_deploy as cd
from cepd_deploy import native
from cepd_deploy.plan.cost import nodes_macs

LAYERS = ("layer3.1.conv3", "layer2.1.conv2", "layer3.0.conv2")
SHAPE = (1, 3, 224, 224)

if not native.available():
    pytest.skip("the native kernel library is not built", allow_module_level=True)


@pytest.fixture(scope="module")
def plan():
    model = cd.convert(cd.build_model("resnet50").eval(), flops_remaining=0.371, input_shape=SHAPE)
    return cd.lower(model.eval(), SHAPE)


def _native(plan, name: str):
    layer, x, r = native.from_plan(plan, name)
    shape = {n.output: n.out_shape for n in plan.nodes} | {plan.input: plan.input_shape}
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(shape[v]).astype(np.float32) for v in (x, r) if v]
    return layer, args, nodes_macs(plan.layer_nodes(name))


@pytest.mark.parametrize("isa", native.ISAS)
@pytest.mark.parametrize("layer", LAYERS)
def test_layer(benchmark, plan, layer, isa):
    best = native.isa()
    if native.ISAS.index(isa) > native.ISAS.index(best):
        pytest.skip(f"this CPU has no {isa}")
    fn, args, macs = _native(plan, layer)
    native.set_threads(2)
    native.use_isa(isa)
    try:
        benchmark.group = layer
        benchmark.pedantic(fn, args=tuple(args), rounds=50, iterations=1, warmup_rounds=5)
    finally:
        native.use_isa(best)
    benchmark.extra_info.update(isa=isa, macs=macs, gmacs=macs / benchmark.stats.stats.median / 1e9)
