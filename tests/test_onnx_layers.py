"""Single CEPD layers of many shapes through both ONNX exports (hypothesis, bounded examples)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_onnx_helpers import OneLayer, random_layer, randomise_bn

import cepd_deploy as cd
from cepd_deploy.plan.reference import run as run_plan
from cepd_deploy.targets.onnx import build_session, prepare, run_session, to_model
from cepd_deploy.targets.onnx.portable import PLACE_MAX_KAPPA

LAYOUTS = ["o-k-i", "eq9", "oo-k-ii", "o1|o2|o3|k|i1|i2|i3"]
CHANNELS = [1, 2, 3, 4, 6, 7, 8, 12, 13, 16, 24]  # includes primes
KERNELS = [(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (3, 5)]


@st.composite
def layer_cases(draw):
    cin, cout = draw(st.sampled_from(CHANNELS)), draw(st.sampled_from(CHANNELS))
    kernel = draw(st.sampled_from(KERNELS))
    stride = draw(st.sampled_from([1, 2]))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    size = draw(st.integers(max(kernel) + 1, 12))
    residual = stride == 1 and cin == cout and padding == (kernel[0] // 2, kernel[1] // 2) \
        and kernel[0] % 2 == 1 and kernel[1] % 2 == 1 and draw(st.booleans())  # fmt: skip
    return dict(
        cin=cin, cout=cout, kernel=kernel, stride=stride, padding=padding, size=size,
        layout=draw(st.sampled_from(LAYOUTS)), kappa=draw(st.integers(0, cout)),
        ranks=draw(st.lists(st.floats(0.05, 1.0), min_size=1, max_size=3)),
        batch=draw(st.sampled_from([1, 2])), bn=draw(st.booleans()), residual=residual,
        act=draw(st.sampled_from([None, "relu", "relu6"])), bias=draw(st.booleans()),
        seed=draw(st.integers(0, 1000)),
    )  # fmt: skip


def _check(case: dict) -> None:
    layer = random_layer(case["cin"], case["cout"], case["kernel"], ranks_frac=case["ranks"],
                         kappa=case["kappa"], layout=case["layout"], stride=case["stride"],
                         padding=case["padding"], bias=case["bias"], seed=case["seed"])  # fmt: skip
    model = randomise_bn(OneLayer(layer, case["bn"], case["residual"], case["act"]), case["seed"])
    shape = (case["batch"], case["cin"], case["size"], case["size"])
    plan = cd.lower(model, shape)
    x = np.random.default_rng(case["seed"]).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(run_plan(plan, x).numpy() - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6
    for fused in (False, True):
        y = run_session(build_session(to_model(prepare(plan), fused=fused), threads=1), x)
        err = np.abs(y - ref).max()
        assert err <= 1e-4 * np.abs(ref).max() + 1e-6, (fused, err, case)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer_cases())
def test_random_single_layers(case):
    _check(case)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kappa", [0, 5, 12])
def test_layouts_and_kappa_extremes(layout, kappa):
    _check(dict(cin=8, cout=12, kernel=(3, 3), stride=1, padding=(1, 1), size=6, layout=layout,
                kappa=kappa, ranks=[0.5], batch=1, bn=True, residual=False, act="relu", bias=True,
                seed=kappa))  # fmt: skip


@pytest.mark.parametrize("kernel", [(3, 3), (5, 5)])  # (a 1x1 with so many kept filters runs dense)
@pytest.mark.parametrize("residual", [False, True])
def test_many_kept_filters_use_scatter_nd(kernel, residual):
    kappa = PLACE_MAX_KAPPA + 9  # too many kept filters to place by MACs
    case = dict(cin=160, cout=160, kernel=kernel, stride=1, padding=(kernel[0] // 2, kernel[1] // 2),
                size=5, layout="o-k-i", kappa=kappa, ranks=[0.1], batch=2, bn=True,
                residual=residual, act="relu", bias=True, seed=3)  # fmt: skip
    _check(case)
    layer = random_layer(160, 160, kernel, ranks_frac=[0.1], kappa=kappa, padding=kernel[0] // 2)
    plan = cd.lower(OneLayer(layer, True, residual, "relu"), (1, 160, 5, 5))
    ops = [n.op_type for n in to_model(prepare(plan)).graph.node]
    assert "ScatterND" in ops and "Concat" not in ops


@pytest.mark.parametrize("residual", [False, True])
def test_pointwise_layer_joins_its_sparse_branch(residual):
    """A 1x1 CEPD conv with few kept filters: x -> [W1; S; 0] -> [W2 | P | 0], no scatter left,
    in the portable graph and in the fused node's function body alike."""
    case = dict(cin=64, cout=64, kernel=(1, 1), stride=1, padding=(0, 0), size=6, layout="o-k-i",
                kappa=6, ranks=[0.25], batch=2, bn=True, residual=residual, act="relu", bias=True,
                seed=5)  # fmt: skip
    _check(case)
    layer = random_layer(64, 64, (1, 1), ranks_frac=[0.25], kappa=6)
    plan = cd.lower(OneLayer(layer, True, residual, "relu"), (1, 64, 6, 6))
    ops = [n.op_type for n in to_model(prepare(plan)).graph.node]
    assert ops.count("Conv") == 2 and not {"Concat", "ScatterND"} & set(ops)
    body = to_model(prepare(plan), fused=True).functions[0]
    body_ops = [n.op_type for n in body.node]
    assert body_ops.count("Conv") == 2 and "ScatterND" not in body_ops
