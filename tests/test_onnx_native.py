"""The native TTSparseConv kernel: numerics vs the Plan reference, eager torch, onnxruntime."""

from __future__ import annotations

import importlib.util
import itertools
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_onnx_helpers import OneLayer, random_layer, randomise_bn

import cepd_deploy as cd
from cepd_deploy import native
from cepd_deploy.native import KernelLayer
from cepd_deploy.plan.ir import MatmulAttrs, Op
from cepd_deploy.plan.reference import run as run_plan
from cepd_deploy.targets.onnx.fused import OP_TYPE

if not native.available() and shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler (c++/g++): the native kernel was not built", allow_module_level=True)


def _plan_layer(case: dict, shape, need=assume):
    layer = random_layer(case["cin"], case["cout"], case["kernel"], ranks_frac=case["ranks"],
                         kappa=case["kappa"], stride=case["stride"], padding=case["padding"],
                         seed=case["seed"])  # fmt: skip
    model = randomise_bn(OneLayer(layer, case["bn"], case["residual"], case["act"]), case["seed"])
    plan = cd.lower(model, shape)
    if not plan.blocks():  # the lowering rebuilt the layer as one dense conv: one conv step
        (node,) = [n for n in plan.nodes if n.op is Op.CONV]
        e = node.epilogue
        weights = [plan.consts[w] for w in (node.weights[0], e.scale, e.bias) if w]
        layer = native.NativeLayer(KernelLayer.from_conv(node), weights)
        return plan, [node], node.inputs[0], node.inputs[-1] if e.residual else None, layer
    (block,) = plan.blocks()
    # tiny layers may pick a contraction order with folded views: not native (tested below)
    need(KernelLayer.from_block(block).unsupported() is None)
    layer, x, r = native.from_plan(plan, block.layer)
    return plan, list(block.nodes), x, r, layer


def test_library_is_built_and_dispatches():
    assert native.available(), "the kernel library should be built by `pip install -e .`"
    assert native.isa() in ("avx512f", "avx2", "scalar")


def test_every_tile_build_matches_reference():
    # the tiles, fused tile+epilogue and row copies of each instruction set this CPU has
    # (pointwise: whole panels take the fused path; 3x3: the split one; stride 2: the phase
    # split and the subsample), against the Plan's reference; the maps end every kind of panel
    # tail: pointwise 10x10 in 4 columns (column tile), 12x12 in 16 (16-column tile), 7x7 in
    # 17 (both); 3x3 at 7x7 (7 rows of 8) in 24, 12x12 (12 rows of 13) in 28 (a whole tile);
    # 23x23 has enough panels to run in groups of panels (pointwise), one of them ending in a
    # tail; 112 outputs at 7x7 run stepwise, their last step in chunks of row blocks.
    # Then S by Winograd: 3x3 stride 1, padded and not, maps of 4 to 18 tiles across (two
    # 16-tile strips) and panels of tiles that start inside a tile row
    kw = dict(cin=16, cout=16, kappa=5, ranks=[0.5], bn=True, act="relu6", seed=3)
    cases = [dict(kernel=(1, 1), stride=1, padding=(0, 0), residual=True, **kw),
             dict(kernel=(3, 3), stride=1, padding=(1, 1), residual=True, **kw),
             dict(kernel=(3, 3), stride=2, padding=(1, 1), residual=False, **kw),
             dict(kernel=(1, 1), stride=2, padding=(0, 0), residual=False, **kw)]  # fmt: skip
    big = dict(cases[1], cin=32, cout=64, kappa=13, ranks=[0.25], residual=False)
    wide = [dict(c, cout=112, residual=False) for c in cases[:2]]
    wino = [big, dict(big, padding=(0, 0))]
    best = native.isa()
    with pytest.raises(cd.CEPDError, match="not available"):
        native.use_isa("neon")
    try:
        for name in native.ISAS[: native.ISAS.index(best) + 1]:
            native.use_isa(name)
            assert native.isa() == name
            for case, size in itertools.product(cases, (12, 7, 10, 23)):
                _check_layer(case, size, name)
            for case in wide:
                _check_layer(case, 7, name)
            native.use_winograd("always")
            for case, size in itertools.product(wino, (9, 14, 36)):
                assert _check_layer(case, size, name).winograd
            native.use_winograd("auto")
    finally:
        native.use_isa(best)
        native.use_winograd("auto")


def _check_layer(case: dict, size: int, name: str) -> native.NativeLayer:
    x = np.random.default_rng(size).standard_normal((1, case["cin"], size, size)).astype(np.float32)
    plan, nodes, x_name, r_name, layer = _plan_layer(case, x.shape, need=_require)
    env = run_plan(plan, x, keep=True)
    ref = env[nodes[-1].output].numpy()
    y = layer(env[x_name].numpy(), env[r_name].numpy() if r_name else None)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6, (name, case["kernel"], size)
    return layer


def test_winograd_where_it_pays():
    # auto, with the AVX-512 and AVX2 builds: 3x3 stride-1 sparse branches of 12 filters or more on
    # maps of 2x2 tiles that do not overhang much (14x14, not 7x7); the generic build (and NEON,
    # unmeasured) and never: none
    case = dict(cin=16, cout=64, kernel=(3, 3), stride=1, padding=(1, 1), kappa=13, ranks=[0.5], bn=False,
                residual=False, act="relu", seed=1)  # fmt: skip
    layer = lambda c, size: _plan_layer(c, (1, 16, size, size), need=_require)[-1]  # noqa: E731
    best = native.isa()
    pays = ("avx512f", "avx2")
    assert layer(case, 14).winograd == (best in pays)
    for isa in native.ISAS[: native.ISAS.index(best)]:  # the builds below this CPU's best
        try:
            native.use_isa(isa)
            assert layer(case, 14).winograd == (isa in pays), isa
        finally:
            native.use_isa(best)
    assert not layer(case, 7).winograd
    assert not layer(dict(case, kappa=6), 14).winograd
    assert not layer(dict(case, stride=2), 14).winograd
    try:
        native.use_winograd("never")
        assert not layer(case, 14).winograd
        native.use_winograd("always")  # any build, where the window allows it
        assert layer(case, 7).winograd and not layer(dict(case, stride=2), 14).winograd
    finally:
        native.use_winograd("auto")
    with pytest.raises(cd.CEPDError, match="Winograd mode"):
        native.use_winograd("sometimes")


def _require(ok: bool) -> None:
    assert ok


@st.composite
def cases(draw):
    cin, cout = draw(st.sampled_from([3, 7, 8, 16, 17, 40])), draw(st.sampled_from([5, 8, 13, 32, 48]))
    k = draw(st.sampled_from([(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 5)]))
    stride = draw(st.sampled_from([1, 2]))
    pad = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    residual = stride == 1 and cin == cout and pad == (k[0] // 2, k[1] // 2) and draw(st.booleans())
    return dict(cin=cin, cout=cout, kernel=k, stride=stride, padding=pad, kappa=draw(st.integers(0, cout)),
                ranks=[draw(st.floats(0.05, 1.0))], bn=draw(st.booleans()), residual=residual,
                act=draw(st.sampled_from([None, "relu", "relu6"])), seed=draw(st.integers(0, 99)),
                size=draw(st.integers(max(k) + 1, 40)), batch=draw(st.sampled_from([1, 3])),
                threads=draw(st.sampled_from([1, 2])),
                winograd=draw(st.sampled_from(["auto", "always"])))  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_native_layer_matches_reference(case):
    shape = (case["batch"], case["cin"], case["size"], case["size"])
    native.use_winograd(case["winograd"])
    try:
        plan, nodes, x_name, r_name, layer = _plan_layer(case, shape)
    finally:
        native.use_winograd("auto")
    native.set_threads(case["threads"])
    x = np.random.default_rng(case["seed"]).standard_normal(shape).astype(np.float32)
    env = run_plan(plan, x, keep=True)
    ref = env[nodes[-1].output].numpy()
    res = env[r_name].numpy() if r_name else None
    for _ in range(2):  # the workspace is reused
        y = layer(env[x_name].numpy(), res)
        assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6
    one = layer(env[x_name].numpy()[:1], res[:1] if res is not None else None)  # smaller batch
    assert np.abs(one - ref[:1]).max() <= 1e-4 * np.abs(ref).max() + 1e-6


def test_pool_workers_joining_late_change_nothing():
    # pauses of several lengths let the pool's workers spin, fall asleep or wake mid-job; the
    # caller runs what they have not claimed, so every run gives the same bits
    import time

    case = dict(cin=16, cout=32, kernel=(3, 3), stride=1, padding=(1, 1), kappa=5, ranks=[0.5], bn=True,
                residual=False, act="relu", seed=3)  # fmt: skip
    shape = (1, 16, 14, 14)
    layer = _plan_layer(case, shape, need=bool)[-1]  # NativeLayer raises if unsupported
    native.set_threads(2)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    first = layer(x)
    for pause in [0, 2e-5, 1e-4, 1e-3] * 25:
        time.sleep(pause)
        assert np.array_equal(layer(x), first)


def test_unsupported_structures_are_reported():
    layer = random_layer(8, 12, (3, 3), kappa=2, layout="oo-k-ii", padding=1)
    plan = cd.lower(OneLayer(layer, False, False, None), (1, 8, 6, 6))
    (block,) = plan.blocks()
    kernel = KernelLayer.from_block(block)
    assert kernel.unsupported() is not None
    with pytest.raises(cd.CEPDError, match="not supported natively"):
        native.NativeLayer(kernel, [])
    with pytest.raises(cd.CEPDError, match="not supported natively"):
        native.from_plan(plan, "layer")


def test_accelerate_eager_torch_matches():
    torch.manual_seed(0)
    model = cd.convert(cd.build_model("resnet20"), flops_remaining=0.5).eval()
    other = random_layer(8, 12, (3, 3), kappa=2, layout="oo-k-ii", padding=1)  # stays on torch
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x_other = torch.randn(1, 8, 6, 6)
        ref, ref_other = model(x), other(x_other)
        native.accelerate(model)
        native.accelerate(other)
        y = model(x)
        assert torch.allclose(other(x_other), ref_other, rtol=0, atol=1e-4 * ref_other.abs().max().item())
    assert torch.allclose(y, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    hooked = [m for m in model.modules() if getattr(m, "_cepd_native", None)]
    assert len(hooked) == sum(isinstance(m, cd.CEPDConv2d) for m in model.modules()) > 0
    assert not getattr(other, "_cepd_native", None) and ref_other.shape == (1, 12, 6, 6)
    y_grad = model(x)  # with autograd on, the torch forward runs (differentiable)
    assert y_grad.requires_grad


def test_accelerate_merges_a_1x1_layers_pointwise_steps():
    """A 1x1 layer's chain (I -> r, the r x r core of its window, r -> O) runs as two steps in the
    eager hook, as in the exports (the plan's merge_pointwise), and matches torch."""
    layer = random_layer(64, 256, (1, 1), ranks_frac=(0.25,), kappa=3).eval()
    x = torch.randn(2, 64, 9, 9)
    with torch.no_grad():
        ref = layer(x)
        native.accelerate(layer)
        y = layer(x)
    assert torch.allclose(y, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    steps = layer._cepd_native.cache[(64, 9, 9)].spec.steps
    assert [(s.cin, s.cout) for s in steps] == [(64, 16), (16, 256)]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime_extensions") is None,
                    reason="onnxruntime-extensions is not installed (the native path in onnxruntime)")
def test_onnxruntime_native_session():
    from cepd_deploy.targets.onnx import build_session, prepare, to_model
    from cepd_deploy.targets.onnx.ort_native import CONTRIB, native_model
    from cepd_deploy.targets.onnx.verify import compare

    torch.manual_seed(0)
    model = cd.convert(cd.build_model("resnet20"), flops_remaining=0.5).eval()
    plan = cd.lower(model, (1, 3, 32, 32))
    fused = to_model(prepare(plan), fused=True)
    rewritten, layers = native_model(fused)
    cepd_layers = len(plan.blocks())
    assert len(layers) == cepd_layers
    assert sum(n.domain == CONTRIB for n in rewritten.graph.node) == cepd_layers
    assert not any(n.op_type == OP_TYPE for n in rewritten.graph.node) and not rewritten.functions
    checks = compare(plan, fused, model, samples=2, native=True)
    assert all(c.ok for c in checks)
    sess = build_session(fused, threads=2, native=True)
    assert len(sess.cepd_native_layers) == cepd_layers


def test_dense_pointwise_layer_matches_numpy():
    # one GEMM, no S (a dense 1x1 conv moved onto the kernel): tasks are half panels; 13 panels
    # at 20x20, a tail of 16 columns, one and two threads
    cin, cout, size = 24, 40, 20
    spec = KernelLayer((1, cin, size, size), (1, cout, size, size), (MatmulAttrs(cin, cout),), bias=True,
                       residual=True, act="relu")  # fmt: skip
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((cout, cin)).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((2, cin, size, size)).astype(np.float32)
    r = rng.standard_normal((2, cout, size, size)).astype(np.float32)
    ref = np.maximum(np.einsum("oi,nihw->nohw", w, x) + b[:, None, None] + r, 0)
    layer = native.NativeLayer(spec, [w, b])
    for threads in (1, 2):
        native.set_threads(threads)
        assert np.abs(layer(x, r) - ref).max() <= 1e-4 * np.abs(ref).max()
