"""The modern-network ops (ACT, MUL, SLICE, PAD, RESIZE, LAYERNORM) in the ONNX exports: edge cases
against the reference interpreter (plan/reference.py) on the same input, the ONNX checker, the
build's own verification, and the ops next to CEPD layers in the fused and native exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from test_onnx_helpers import OneLayer, random_layer
from torch import nn

import cepd_deploy as cd
from cepd_deploy import targets
from cepd_deploy.plan.ir import (
    ACTIVATIONS,
    ActAttrs,
    ConvAttrs,
    Node,
    NormAttrs,
    Op,
    PadAttrs,
    Plan,
    ResizeAttrs,
    SliceAttrs,
)
from cepd_deploy.plan.reference import run as reference
from cepd_deploy.plan.verify import verify
from cepd_deploy.targets.onnx import build_session, ort_library, run_session, to_model
from cepd_deploy.targets.onnx.fused import OP_TYPE
from cepd_deploy.targets.onnx.graph import IR_VERSION, OPSET
from cepd_deploy.targets.onnx.portable import nearest_index, ort_nearest_index
from tests.plans import modern_plan

TOL = 1e-4  # max abs error <= TOL x max|y| (DESIGN.md)
ONNX_TARGETS = ("onnxruntime", "onnxruntime-fused", "onnxruntime-native")


class _Builder:
    """A Plan grown one node at a time from input ``x`` (optionally after a 3x3 conv, so that
    onnxruntime's conv fusions and blocked layout meet the op)."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0, conv_first: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.shapes = {"x": tuple(shape)}
        self.last = "x"
        if conv_first:
            c = shape[1]
            w = self.const("conv.w", (c, c, 3, 3), 0.3)
            self.add(Op.CONV, shape, weights=(w,), attrs=ConvAttrs((3, 3), padding=(1, 1), cin=c, cout=c))

    def const(self, name: str, shape: tuple[int, ...], scale: float = 0.3, offset: float = 0.0) -> str:
        self.consts[name] = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        return name

    def add(self, op: Op, out_shape: tuple[int, ...], inputs: tuple[str, ...] | None = None, **kw) -> str:
        inputs = inputs or (self.last,)
        name = f"{op.value}{len(self.nodes)}"
        shapes = tuple(self.shapes[i] for i in inputs)
        self.nodes.append(Node(op, name, inputs, name, shapes, tuple(out_shape), layer=name, **kw))
        self.shapes[name] = tuple(out_shape)
        self.last = name
        return name

    def plan(self) -> Plan:
        plan = Plan("x", self.shapes["x"], self.last, self.nodes, self.consts)
        verify(plan)
        return plan


def _run(plan: Plan, x: np.ndarray, fused: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's output (export checked by the full ONNX checker) and the reference's."""
    model = to_model(plan, fused=fused)
    y = run_session(build_session(model, threads=1), x)
    return y, reference(plan, x).numpy()


def _close(y: np.ndarray, ref: np.ndarray) -> bool:
    return y.shape == ref.shape and float(np.abs(y - ref).max()) <= TOL * float(np.abs(ref).max())


def _x(shape: tuple[int, ...], scale: float = 1.0, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# -- ACT -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("shape,conv_first", [((2, 5, 3, 4), False), ((2, 5, 3, 4), True), ((3, 5), False)])
def test_activation(kind, shape, conv_first):
    b = _Builder(shape, seed=2, conv_first=conv_first)
    weights = (b.const("slope", (shape[1],), 0.2, 0.25),) if kind == "prelu" else ()
    b.add(Op.ACT, shape, attrs=ActAttrs(kind, 0.07 if kind == "leaky_relu" else 0.0), weights=weights)
    x = _x(shape, 4.0)  # wide enough to reach the saturated parts of hardsigmoid / hardswish
    y, ref = _run(b.plan(), x)
    assert _close(y, ref), (kind, float(np.abs(y - ref).max()))
    assert (x < -3).any() and (x > 3).any()


@pytest.mark.parametrize("shape", [(2, 6, 4, 3), (2, 6)])
def test_prelu_with_one_slope(shape):
    b = _Builder(shape)
    b.consts["slope"] = np.array([0.3], np.float32)
    b.add(Op.ACT, shape, attrs=ActAttrs("prelu"), weights=("slope",))
    x = _x(shape)
    y, ref = _run(b.plan(), x)
    assert _close(y, ref) and np.allclose(ref, np.where(x > 0, x, 0.3 * x))


def test_hardsigmoid_is_torchs_at_the_kinks():
    shape = (1, 1, 2, 6)
    b = _Builder(shape)
    b.add(Op.ACT, shape, attrs=ActAttrs("hardsigmoid"))
    x = np.array([-3.0, -2.999, 0.0, 1.5, 2.999, 3.0, 3.001, -9.0, 9.0, 0.5, -0.5, 6.0], np.float32)
    y, ref = _run(b.plan(), x.reshape(shape))
    assert np.abs(y - ref).max() <= 1e-6


# -- MUL -------------------------------------------------------------------------------------
@pytest.mark.parametrize("b_shape", [(2, 6, 5, 7), (2, 6, 1, 1)])
def test_mul_same_shape_and_broadcast(b_shape):
    shape = (2, 6, 5, 7)
    b = _Builder(shape, conv_first=True)
    a = b.last
    g = (
        b.add(Op.GLOBAL_AVGPOOL, (2, 6, 1, 1))
        if b_shape[2] == 1
        else b.add(Op.ACT, shape, attrs=ActAttrs("tanh"))
    )
    b.add(Op.MUL, shape, inputs=(a, g))
    y, ref = _run(b.plan(), _x(shape))
    assert _close(y, ref)


def test_mul_of_2d_values():
    b = _Builder((3, 7))
    t = b.add(Op.ACT, (3, 7), attrs=ActAttrs("sigmoid"))
    b.add(Op.MUL, (3, 7), inputs=("x", t))
    y, ref = _run(b.plan(), _x((3, 7)))
    assert _close(y, ref)


# -- SLICE, PAD: exact ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 7, 3, 4), (3, 7)])
@pytest.mark.parametrize("start,stop", [(0, 3), (3, 7), (4, 5), (0, 7)])
def test_slice(shape, start, stop):
    b = _Builder(shape)
    b.add(Op.SLICE, (shape[0], stop - start, *shape[2:]), attrs=SliceAttrs(start, stop))
    y, ref = _run(b.plan(), _x(shape))
    assert np.array_equal(y, ref)


def test_two_slices_joined_again():
    shape = (1, 8, 4, 4)
    b = _Builder(shape, conv_first=True)
    c = b.last
    lo = b.add(Op.SLICE, (1, 3, 4, 4), inputs=(c,), attrs=SliceAttrs(0, 3))
    hi = b.add(Op.SLICE, (1, 5, 4, 4), inputs=(c,), attrs=SliceAttrs(3, 8))
    b.add(Op.CONCAT, shape, inputs=(hi, lo))  # a channel shuffle of sorts
    y, ref = _run(b.plan(), _x(shape))
    assert _close(y, ref)


@pytest.mark.parametrize("pads", [(0, 2, 3, 1), (1, 0, 0, 0), (0, 0, 0, 0), (2, 2, 2, 2)])
def test_pad_asymmetric(pads):
    shape = (2, 3, 5, 4)
    top, bottom, left, right = pads
    b = _Builder(shape)
    b.add(Op.PAD, (2, 3, 5 + top + bottom, 4 + left + right), attrs=PadAttrs(pads))
    y, ref = _run(b.plan(), _x(shape))
    assert np.array_equal(y, ref)


def test_pad_before_a_conv():  # onnxruntime folds the Pad into the conv's pads
    shape = (1, 4, 6, 6)
    b = _Builder(shape)
    b.add(Op.PAD, (1, 4, 7, 9), attrs=PadAttrs((0, 1, 1, 2)))
    b.add(
        Op.CONV, (1, 4, 5, 7), weights=(b.const("w", (4, 4, 3, 3)),), attrs=ConvAttrs((3, 3), cin=4, cout=4)
    )
    y, ref = _run(b.plan(), _x(shape))
    assert _close(y, ref)


# -- RESIZE ----------------------------------------------------------------------------------
MODES = [("nearest", False), ("bilinear", False), ("bilinear", True)]
SIZES = [
    ((1, 1), (5, 3)),  # from size 1
    ((5, 4), (1, 1)),  # to size 1
    ((1, 6), (4, 1)),
    ((5, 7), (11, 13)),  # odd sizes up
    ((7, 5), (3, 4)),  # odd sizes down
    ((8, 8), (16, 16)),
    ((6, 6), (6, 6)),
    ((14, 28), (2, 4)),  # onnxruntime rounds nearest differently from torch on both axes here
    ((14, 8), (2, 16)),  # ... on the rows only
]


@pytest.mark.parametrize("mode,align_corners", MODES)
@pytest.mark.parametrize("hw,size", SIZES)
def test_resize(hw, size, mode, align_corners):
    shape = (2, 3, *hw)
    b = _Builder(shape)
    b.add(Op.RESIZE, (2, 3, *size), attrs=ResizeAttrs(size, mode, align_corners))
    plan = b.plan()
    y, ref = _run(plan, _x(shape))
    if mode == "nearest":
        assert np.array_equal(y, ref)
    else:
        assert _close(y, ref), float(np.abs(y - ref).max())


@pytest.mark.parametrize("mode,align_corners", MODES)
@pytest.mark.parametrize("factor", [2, 4])
def test_resize_after_a_conv(factor, mode, align_corners):  # onnxruntime's blocked-layout Upsample
    shape = (1, 16, 5, 6)
    b = _Builder(shape, conv_first=True)
    size = (5 * factor, 6 * factor)
    b.add(Op.RESIZE, (1, 16, *size), attrs=ResizeAttrs(size, mode, align_corners))
    y, ref = _run(b.plan(), _x(shape))
    assert _close(y, ref), float(np.abs(y - ref).max())


@pytest.mark.parametrize("hw,size,resize,matmul", [
    ((8, 8), (16, 16), 1, 0), ((14, 28), (2, 4), 0, 2), ((14, 8), (2, 16), 1, 1)])  # fmt: skip
def test_nearest_uses_resize_where_onnxruntime_agrees(hw, size, resize, matmul):
    b = _Builder((1, 2, *hw))
    b.add(Op.RESIZE, (1, 2, *size), attrs=ResizeAttrs(size, "nearest"))
    ops = [n.op_type for n in to_model(b.plan()).graph.node]
    assert (ops.count("Resize"), ops.count("MatMul")) == (resize, matmul)


def _ort_resize_index(size: int, outs: range) -> list[np.ndarray]:
    """onnxruntime's nearest (asymmetric, floor) source index of a (size,) axis to each of ``outs``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, 1])
    nodes, outputs, inits = [], [], []
    for o in outs:
        inits.append(numpy_helper.from_array(np.array([1, 1, o, 1], np.int64), f"s{o}"))
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        nodes.append(helper.make_node("Resize", ["x", "", "", f"s{o}"], [f"y{o}"], **attrs))
        outputs.append(helper.make_tensor_value_info(f"y{o}", TensorProto.FLOAT, [1, 1, o, 1]))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outputs, inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])  # fmt: skip
    model.ir_version = IR_VERSION
    ys = build_session(model, threads=1).run(
        None, {"x": np.arange(size, dtype=np.float32).reshape(1, 1, size, 1)}
    )
    return [y.reshape(-1).astype(np.int64) for y in ys]


def test_the_onnxruntime_nearest_rule_is_onnxruntimes():
    """The exporter predicts where onnxruntime's Resize picks torch's pixels (else it selects by
    MatMul): the prediction must be onnxruntime's own rounding, on every size pair tried."""
    disagree = 0
    for size in range(1, 41):
        outs = range(1, 61)
        for o, got in zip(outs, _ort_resize_index(size, outs)):
            assert np.array_equal(ort_nearest_index(size, o), got), (size, o)
            disagree += not np.array_equal(nearest_index(size, o), got)
    assert disagree > 0  # the fallback is needed (e.g. 14 -> 2)


# -- LAYERNORM -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,conv_first", [((2, 6, 3, 5), False), ((2, 6, 3, 5), True), ((3, 6), False)])
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 0.5])
def test_layernorm(shape, conv_first, eps):
    b = _Builder(shape, conv_first=conv_first)
    w = (b.const("scale", (shape[1],), 0.2, 1.0), b.const("shift", (shape[1],), 0.1))
    b.add(Op.LAYERNORM, shape, attrs=NormAttrs(eps), weights=w)
    x = _x(shape, 2.0) + 3.0  # a mean far from zero
    y, ref = _run(b.plan(), x)
    assert _close(y, ref), float(np.abs(y - ref).max())


# -- whole Plans -----------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [False, True])
def test_modern_plan_passes_the_full_checker(fused):
    model = to_model(modern_plan(), fused=fused)
    onnx.checker.check_model(model, full_check=True)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    ops = {n.op_type for n in model.graph.node}
    assert {"Resize", "LayerNormalization", "PRelu", "Erf", "Slice", "Pad", "HardSigmoid"} <= ops


@pytest.mark.parametrize("name", ONNX_TARGETS)
def test_build_verifies_every_new_op(name, tmp_path):
    """The build's own check compares every op's output with the reference, the new ones too."""
    plan = modern_plan(seed=3)
    built = targets.get(name).build(plan, tmp_path / "out")
    assert built.ok, built.problem
    checked = {c["value"] for c in built.figures["checks"] if c["against"] == "plan"}
    assert checked == {n.output for n in plan.nodes}
    assert (tmp_path / "out" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def cepd_then_modern() -> Plan:
    """A CEPD layer whose output goes through squeeze-excitation, a 1x1 conv read by a MUL, a pad,
    a resize and a layer norm: the new ops next to a TTSparseConv node (fused, native)."""
    torch.manual_seed(0)
    layer = random_layer(8, 8, (3, 3), kappa=3, padding=1, seed=4)
    base = cd.lower(OneLayer(layer, bn=False, residual=False, act="relu").eval(), (2, 8, 6, 6))
    assert len(base.blocks()) == 1
    b = _Builder(base.input_shape, seed=5)
    b.nodes, b.consts = list(base.nodes), dict(base.consts)
    b.shapes.update({n.output: n.out_shape for n in base.nodes})
    y = b.last = base.output
    a = b.add(Op.ACT, (2, 8, 6, 6), attrs=ActAttrs("silu"))
    g = b.add(Op.GLOBAL_AVGPOOL, (2, 8, 1, 1))
    g = b.add(
        Op.CONV,
        (2, 8, 1, 1),
        weights=(b.const("se.w", (8, 8, 1, 1)),),
        attrs=ConvAttrs((1, 1), cin=8, cout=8),
    )
    g = b.add(Op.ACT, (2, 8, 1, 1), attrs=ActAttrs("hardsigmoid"))
    s = b.add(Op.MUL, (2, 8, 6, 6), inputs=(a, g))
    c = b.add(Op.CONV, (2, 8, 6, 6), inputs=(y,), weights=(b.const("pw.w", (8, 8, 1, 1)),),
              attrs=ConvAttrs((1, 1), cin=8, cout=8))  # fmt: skip
    b.add(Op.MUL, (2, 8, 6, 6), inputs=(c, s))
    b.add(Op.PAD, (2, 8, 7, 8), attrs=PadAttrs((1, 0, 0, 2)))
    b.add(Op.RESIZE, (2, 8, 14, 16), attrs=ResizeAttrs((14, 16), "bilinear"))
    b.add(
        Op.LAYERNORM,
        (2, 8, 14, 16),
        attrs=NormAttrs(1e-6),
        weights=(b.const("s", (8,), 0.2, 1.0), b.const("t", (8,))),
    )
    plan = Plan(base.input, base.input_shape, b.last, b.nodes, b.consts, base.layers)
    verify(plan)
    return plan


@pytest.mark.parametrize("name", ONNX_TARGETS)
def test_new_ops_next_to_a_cepd_layer(name, cepd_then_modern, tmp_path):
    plan = cepd_then_modern
    target, x = targets.get(name), _x(plan.input_shape)
    before = ort_library.runs() if ort_library.available() else 0
    y = target.runner(plan, 1, tmp_path)(x)
    assert _close(y, reference(plan, x).numpy())
    if target.native and ort_library.available():  # the CEPD layer ran on the kernel
        assert ort_library.runs() > before
    if target.fused:
        model = onnx.load(next(tmp_path.glob(f"{name}-*/m.onnx")))
        assert [n.op_type for n in model.graph.node].count(OP_TYPE) == 1


class _Modern(nn.Module):
    """Torch modules that lower to the new ops: a padded conv, SE with SiLU and Hardsigmoid, PReLU,
    GELU, Hardswish, LeakyReLU, Tanh and an upsample."""

    def __init__(self, mode: str, align_corners: bool | None) -> None:
        super().__init__()
        self.pad, self.conv = nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(3, 8, 3)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.acts = nn.Sequential(nn.PReLU(8), nn.GELU(), nn.Hardswish(), nn.LeakyReLU(0.2), nn.Tanh())
        self.up = nn.Upsample(size=(13, 11), mode=mode, align_corners=align_corners)

    def forward(self, x):
        y = F.silu(self.conv(self.pad(x)))
        y = y * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.up(self.acts(y))


@pytest.mark.parametrize("mode,align_corners", [("nearest", None), ("bilinear", False), ("bilinear", True)])
def test_torch_modules_through_export_match_torch(mode, align_corners, tmp_path):
    torch.manual_seed(0)
    model = _Modern(mode, align_corners).eval()
    path = cd.export_onnx(model, tmp_path / "m.onnx", input_shape=(2, 3, 7, 6))
    x = _x((2, 3, 7, 6))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert _close(run_session(build_session(path, threads=1), x), ref)
