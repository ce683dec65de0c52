"""TVM (llvm, and cuda code generation) on the modern-network ops of issue 19: ACT (alone, or fused
into the epilogue of the op before it), MUL, SLICE, PAD, RESIZE and LAYERNORM, each against the
Plan reference (max error <= 1e-4 x max|y|). TVM builds are slow: one Plan covers many edge cases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install cepd-deploy[tvm])")

from cepd_deploy import targets  # noqa: E402
from cepd_deploy.plan.ir import (  # noqa: E402
    ACTIVATIONS,
    EPILOGUE_OPS,
    ActAttrs,
    ConvAttrs,
    Epilogue,
    Node,
    NormAttrs,
    Op,
    PadAttrs,
    Plan,
    PoolAttrs,
    ResizeAttrs,
    Role,
    SliceAttrs,
)
from cepd_deploy.plan.reference import run as reference  # noqa: E402
from cepd_deploy.plan.verify import verify  # noqa: E402
from cepd_deploy.targets.tvm.lowering import lower_plan  # noqa: E402
from cepd_deploy.targets.tvm.simple import layernorm, linear_taps, nearest_index  # noqa: E402
from tests.plans import modern_plan  # noqa: E402
from tests.test_tvm import rand, rel, run_call  # noqa: E402

TOL = 1e-4


class Net:
    """A Plan built node by node (each node's output is its name)."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.shapes = {"x": shape}
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}

    def const(self, name: str, shape: tuple[int, ...], scale: float = 0.3, offset: float = 0.0) -> str:
        self.consts[name] = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        return name

    def __call__(self, op: Op, name: str, inputs, out_shape, **kw) -> str:
        inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        in_shapes = tuple(self.shapes[x] for x in inputs)
        self.nodes.append(Node(op, name, inputs, name, in_shapes, tuple(out_shape), layer=name, **kw))
        self.shapes[name] = tuple(out_shape)
        return name

    def act(self, name: str, x: str, kind: str, alpha: float = 0.0, slopes: int = 0) -> str:
        w = (self.const(f"{name}.slope", (slopes,), 0.1, 0.25),) if kind == "prelu" else ()
        return self(Op.ACT, name, x, self.shapes[x], attrs=ActAttrs(kind, alpha), weights=w)

    def resize(self, name: str, x: str, size, mode: str, corners: bool = False) -> str:
        return self(Op.RESIZE, name, x, (*self.shapes[x][:2], *size), attrs=ResizeAttrs(size, mode, corners))

    def flat(self, x: str) -> str:
        n, *rest = self.shapes[x]
        return self(Op.FLATTEN, f"{x}.flat", x, (n, int(np.prod(rest))))

    def plan(self, out: str) -> Plan:
        plan = Plan("x", self.shapes["x"], out, self.nodes, self.consts)
        verify(plan)
        return plan


def edge_plan() -> Plan:
    """Batch 2, odd image sizes: asymmetric pads (one side only) before a conv with padding 0, a
    one-slope PReLU fused into the conv, resizes to and from 1x1 and between odd sizes in every
    mode, broadcast and same-shape MUL, 4-D and 2-D SLICE, LAYERNORM and per-channel PReLU. Every
    branch is flattened into the output, so none can hide another's error."""
    g = Net((2, 4, 7, 5))
    p = g(Op.PAD, "pad", "x", (2, 4, 9, 6), attrs=PadAttrs((0, 2, 1, 0)))
    w, b = g.const("conv.w", (6, 4, 3, 3)), g.const("conv.b", (6,))
    c = g(Op.CONV, "conv", p, (2, 6, 7, 4), weights=(w,), attrs=ConvAttrs((3, 3), cin=4, cout=6),
          epilogue=Epilogue(bias=b))  # fmt: skip
    c = g.act("prelu1", c, "prelu", slopes=1)  # fused into the conv
    p2 = g(Op.PAD, "pad2", c, (2, 6, 8, 7), attrs=PadAttrs((1, 0, 0, 3)))
    s = g(Op.SLICE, "slice", p2, (2, 4, 8, 7), attrs=SliceAttrs(1, 5))
    a = g.act("leaky", s, "leaky_relu", alpha=0.2)  # alone (a slice has no epilogue)
    branches = [
        g.resize("to1", a, (1, 1), "bilinear"),  # half-pixel: the centre, not pixel 0
        g.resize("to1c", a, (1, 1), "bilinear", corners=True),
        g.resize("to1n", a, (1, 1), "nearest"),
        g.resize("up", a, (13, 3), "bilinear"),
        g.resize("upc", a, (13, 3), "bilinear", corners=True),
        g.resize("odd", a, (3, 11), "nearest"),
    ]
    one = g(Op.GLOBAL_AVGPOOL, "gap", a, (2, 4, 1, 1))
    branches += [
        g.resize("from1", one, (5, 3), "bilinear"),
        g.resize("from1c", one, (5, 3), "bilinear", corners=True),
        g.resize("from1n", one, (2, 3), "nearest"),
        g(Op.MUL, "se", (a, g.act("gate", one, "sigmoid")), (2, 4, 8, 7)),
    ]
    ln_w = (g.const("ln4.s", (4,), 0.2, 1.0), g.const("ln4.t", (4,), 0.1))
    branches.append(g(Op.LAYERNORM, "ln4", a, (2, 4, 8, 7), attrs=NormAttrs(1e-5), weights=ln_w))
    flats = [g.flat(b) for b in branches]
    width = sum(g.shapes[f][1] for f in flats)
    z = g(Op.CONCAT, "z", flats, (2, width))
    ln = g(Op.LAYERNORM, "ln2", z, (2, width), attrs=NormAttrs(1e-3),
           weights=(g.const("ln2.s", (width,), 0.2, 1.0), g.const("ln2.t", (width,), 0.1)))  # fmt: skip
    s2 = g(Op.SLICE, "slice2", ln, (2, width - 5), attrs=SliceAttrs(3, width - 2))
    m = g(Op.MUL, "mul2", (s2, g.act("gelu2", s2, "gelu")), (2, width - 5))
    fc = g(Op.LINEAR, "fc", m, (2, 6), weights=(g.const("fc.w", (6, width - 5), 0.1),),
           epilogue=Epilogue(bias=g.const("fc.b", (6,))))  # fmt: skip
    fc = g.act("prelu6", fc, "prelu", slopes=6)  # fused into the linear layer
    return g.plan(g(Op.CONCAT, "out", (z, m, fc), (2, 2 * width - 5 + 6)))


def degenerate_plan() -> Plan:
    """Batch 2, odd channel counts (5, 3, 1) and maps shrunk to 1x1, 1xW and Hx1 (issue: the
    schedules vectorised loops that a unit extent removes): max and average pools to 1x1 (a
    window clipped by padding on a 1x1 input too) and to 1xW / Hx1, depthwise and grouped convs
    to 1x1 (3x3 strided, 3x3 on a 1x1 map, 1x1 with one input channel per group), convs along
    1xW and Hx1 maps, pads beside a one-pixel interior, layer norms on 1x1 (one channel too), 1xW
    and Hx1 maps, a global pool of a 1x1 map, a squeeze-excitation MUL on 1x1, a resize of an Hx1
    map, one-output and one-input linear layers. Every branch is flattened into the output."""
    g = Net((2, 5, 6, 4))
    pool = PoolAttrs

    def conv(name, x, cout, k, s=1, p=0, groups=1, bias=True):
        n, cin, h, w = g.shapes[x]
        k, s, p = ((v, v) if isinstance(v, int) else v for v in (k, s, p))
        ho, wo = ((h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1)
        wt = g.const(f"{name}.w", (cout, cin // groups, *k))
        epi = Epilogue(bias=g.const(f"{name}.b", (cout,)), act="relu") if bias else Epilogue()
        attrs = ConvAttrs(k, s, p, groups=groups, cin=cin, cout=cout)
        return g(Op.CONV, name, x, (n, cout, ho, wo), weights=(wt,), attrs=attrs, epilogue=epi)

    def ln(name, x):
        c = g.shapes[x][1]
        w = (g.const(f"{name}.s", (c,), 0.2, 1.0), g.const(f"{name}.t", (c,), 0.1))
        return g(Op.LAYERNORM, name, x, g.shapes[x], attrs=NormAttrs(1e-5), weights=w)

    branches = [g(Op.MAXPOOL, "max1", "x", (2, 5, 1, 1), attrs=pool((6, 4), (6, 4)))]
    m2 = g(Op.MAXPOOL, "max2", "x", (2, 5, 2, 2), attrs=pool((3, 2), (3, 2)))
    a31 = g(Op.AVGPOOL, "avg31", "x", (2, 5, 3, 1), attrs=pool((3, 4), (2, 4), (1, 0)))  # Hx1
    branches += [a31, g(Op.MAXPOOL, "max11", a31, (2, 5, 1, 1), attrs=pool((3, 1), (3, 1)))]
    branches.append(g(Op.AVGPOOL, "avg1", m2, (2, 5, 1, 1), attrs=pool((2, 2), (2, 2))))
    dw = conv("dw", m2, 5, 3, 2, 1, groups=5)  # depthwise, strided to 1x1
    branches += [dw, g(Op.AVGPOOL, "avgpad", dw, (2, 5, 1, 1), attrs=pool((3, 3), (1, 1), (1, 1)))]
    c6 = conv("pw6", m2, 6, 1)
    gr = conv("grouped", c6, 6, 3, 2, 1, groups=2)  # grouped, strided to 1x1
    g3 = conv("grouped1", gr, 3, 3, 1, 1, groups=3)  # 3x3 on a 1x1 map, one output per group
    branches += [gr, g3, conv("dw1x1", g3, 6, 1, groups=3)]  # one input channel per group
    branches += [ln("ln1", gr), g(Op.GLOBAL_AVGPOOL, "gap1", gr, (2, 6, 1, 1))]
    one = g(Op.SLICE, "one", g3, (2, 1, 1, 1), attrs=SliceAttrs(1, 2))
    branches += [ln("ln_c1", one), conv("cin1", one, 4, 1)]
    gate = g.act("gate", g(Op.GLOBAL_AVGPOOL, "gap5", dw, (2, 5, 1, 1)), "sigmoid")
    branches.append(g(Op.MUL, "se", (dw, gate), (2, 5, 1, 1)))
    # 1xW: a row of pixels
    row = g(Op.MAXPOOL, "row", "x", (2, 5, 1, 4), attrs=pool((6, 1), (6, 1)))
    r = conv("row.dw", row, 5, (1, 3), p=(0, 1), groups=5)
    r = conv("row.conv", r, 3, 3, p=1)
    branches += [r, ln("row.ln", r), g(Op.AVGPOOL, "row.pool", r, (2, 3, 1, 2), attrs=pool((1, 2), (1, 2)))]
    branches.append(g(Op.PAD, "row.pad", row, (2, 5, 2, 4), attrs=PadAttrs((1, 0, 0, 0))))
    # Hx1: a column
    col = g(Op.MAXPOOL, "col", "x", (2, 5, 6, 1), attrs=pool((1, 4), (1, 4)))
    c = conv("col.dw", col, 5, (3, 1), p=(1, 0), groups=5)
    c = conv("col.conv", c, 3, 3, 2, 1)
    branches += [c, ln("col.ln", col), g(Op.PAD, "col.pad", col, (2, 5, 6, 2), attrs=PadAttrs((0, 0, 1, 0)))]
    branches.append(g.resize("col.up", c, (3, 3), "bilinear"))
    flats = [g.flat(b) for b in branches]
    width = sum(g.shapes[f][1] for f in flats)
    z = g(Op.CONCAT, "z", flats, (2, width))
    fc1 = g(Op.LINEAR, "fc1", z, (2, 1), weights=(g.const("fc1.w", (1, width), 0.1),))
    fc3 = g(Op.LINEAR, "fc3", fc1, (2, 3), weights=(g.const("fc3.w", (3, 1)),),
            epilogue=Epilogue(bias=g.const("fc3.b", (3,))))  # fmt: skip
    fc11 = g(Op.LINEAR, "fc11", fc1, (2, 1), weights=(g.const("fc11.w", (1, 1)),))
    return g.plan(g(Op.CONCAT, "out", (z, fc1, fc3, fc11), (2, width + 5)))


def run_tvm(plan: Plan, tmp_path, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The llvm build's output and the reference's, on one random input."""
    x = np.random.default_rng(seed).standard_normal(plan.input_shape).astype(np.float32)
    y = np.asarray(targets.get("tvm").runner(plan, 1, tmp_path)(x))
    return y, reference(plan, x).numpy()


# -- resize index tables: numpy only -----------------------------------------------------------
@pytest.mark.parametrize("mode,corners", [("nearest", False), ("bilinear", False), ("bilinear", True)])
def test_resize_tables_are_torchs(mode, corners):
    """Every (in, out) size pair up to 40 (1 and odd sizes included). Nearest takes torch's float32
    source index: (2 -> 82) picks pixel 0 at output 41, where floor(41 * 2 / 82) = 1."""
    for n_in in range(1, 41):
        x = np.random.default_rng(n_in).standard_normal(n_in).astype(np.float32)
        t = torch.from_numpy(x).view(1, 1, 1, n_in)
        for n_out in range(1, 41):
            kw = {} if mode == "nearest" else {"align_corners": corners}
            ref = F.interpolate(t, size=(1, n_out), mode=mode, **kw).view(-1).numpy()
            if mode == "nearest":
                y = x[nearest_index(n_in, n_out)]
            else:
                idx, lam = linear_taps(n_in, n_out, corners)
                assert idx.min() >= 0 and idx.max() < n_in
                y = x[idx[:, 0]] * lam[:, 0] + x[idx[:, 1]] * lam[:, 1]
            assert np.abs(y - ref).max() <= 1e-5 * max(np.abs(x).max(), 1.0), (n_in, n_out)
    assert nearest_index(2, 82)[41] == 0 and (41 * 2) // 82 == 1


# -- kernels -----------------------------------------------------------------------------------
def test_activations_match_torch_everywhere():
    """Every ACT kind as the kernels compute it (exp, erf and tanh by polynomials that vectorise)
    against torch on a dense grid, tiny and huge inputs included: within 2e-6 x max(|y|, 1)."""
    from cepd_deploy.plan.reference import ACTIVATION_FNS
    from cepd_deploy.targets.tvm.host import make_target
    from cepd_deploy.targets.tvm.kernel import activation

    grid = np.linspace(-12, 12, 24001, dtype=np.float32)
    extremes = np.float32([0.0, 1e-30, 1e-6, 87.0, 88.5, 89.0, 100.0, 1e4])
    xs = np.concatenate([grid, extremes, -extremes])
    x = tvm.te.placeholder(xs.shape, name="x")
    slope = tvm.te.placeholder((1,), name="slope")
    lib_target = make_target("llvm")
    for kind in ACTIVATIONS:
        y = tvm.te.compute(xs.shape, lambda i: activation(x[i], kind, 0.1, slope[0]), name="y")  # noqa: B023
        sch = tvm.s_tir.Schedule(tvm.te.create_prim_func([x, slope, y]))
        sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 8])[1])
        f = tvm.compile(sch.mod, target=lib_target)
        out = tvm.runtime.tensor(np.zeros_like(xs))
        f(tvm.runtime.tensor(xs), tvm.runtime.tensor(np.float32([0.25])), out)
        attrs = ActAttrs(kind, 0.1)
        want = ACTIVATION_FNS[kind](torch.from_numpy(xs), attrs, torch.tensor([0.25])).numpy()
        got = out.numpy()
        assert np.isfinite(got).all(), kind
        assert (np.abs(got - want) / np.maximum(np.abs(want), 1.0)).max() <= 2e-6, kind


@pytest.mark.parametrize("shape", [(1, 5, 2, 70), (3, 200), (3, 1), (2, 1, 3, 1), (1, 5, 1, 1)])
def test_layernorm_kernel_on_wide_rows(shape):
    """Rows longer than the split threshold (the vectorised pixel/channel loops are split), and
    ones of a single pixel or channel (no such loop)."""
    x = rand(*shape) * 3 + 1
    c = shape[1]
    sc, sh = rand(c, seed=1), rand(c, seed=2)
    y = run_call(layernorm(shape, 1e-5, sc, sh), [x])
    t = torch.from_numpy(x).movedim(1, -1)
    ref = F.layer_norm(t, (c,), torch.from_numpy(sc), torch.from_numpy(sh), 1e-5).movedim(-1, 1).numpy()
    assert rel(y, ref) <= TOL


# -- whole Plans -------------------------------------------------------------------------------
def test_edge_cases_match_the_reference(tmp_path):
    plan = edge_plan()
    _, lw = lower_plan(plan)
    assert {n.name for n in lw.acts.values()} == {"prelu1", "prelu6"}  # the others run alone
    y, want = run_tvm(plan, tmp_path)
    assert y.shape == want.shape and np.abs(y - want).max() <= TOL * np.abs(want).max()


def test_degenerate_shapes_match_the_reference(tmp_path):
    """Maps of one pixel, one row or one column and odd channel counts schedule (no vectorised
    or split unit loop) and compute what the reference does."""
    plan = degenerate_plan()
    _, lw = lower_plan(targets.get("tvm").prepare(plan))
    keys = set(lw.kernels)
    for kind in ("maxpool", "avgpool", "layernorm", "pad", "gap"):
        assert any(k.startswith(kind) and ("o1x1" in k or "x1_" in k or "x1x" in k) for k in keys), kind
    assert any("plain" in k and "g5" in k for k in keys) and any("plain" in k and "g2" in k for k in keys)
    y, want = run_tvm(plan, tmp_path)
    assert y.shape == want.shape and np.abs(y - want).max() <= TOL * np.abs(want).max()


def without_sparse(plan: Plan) -> Plan:
    """``plan`` with every CEPD layer's S branch dropped: the TT chain's last step (on folded
    channels) then carries the layer's epilogue."""
    scatters = {n.inputs[0]: n for n in plan.nodes if n.role is Role.SCATTER}
    nodes = []
    for n in plan.nodes:
        if n.role in (Role.SPARSE, Role.SCATTER):
            continue
        sc = scatters.get(n.output)
        if sc is not None:
            res = (sc.inputs[-1],) if sc.epilogue.residual else ()
            n = replace(n, inputs=n.inputs + res, output=sc.output, epilogue=sc.epilogue)
        nodes.append(n)
    return Plan(plan.input, plan.input_shape, plan.output, nodes, plan.consts, plan.layers)


def with_activations(plan: Plan, kinds=ACTIVATIONS) -> Plan:
    """``plan`` with an ACT after every op with an epilogue outside a CEPD layer and after each
    layer's last op (cycling through ``kinds``; prelu per channel); a ReLU epilogue becomes the
    ACT."""
    kinds = list(kinds) * len(plan.nodes)
    lasts = {b.last.name for b in plan.blocks()}
    nodes, consts, rename = [], dict(plan.consts), {}
    for node in plan.nodes:
        node = replace(node, inputs=tuple(rename.get(x, x) for x in node.inputs))
        if node.op not in EPILOGUE_OPS or (node.role is not Role.NONE and node.name not in lasts):
            nodes.append(node)
            continue
        kind = kinds.pop(0)
        node = replace(node, epilogue=replace(node.epilogue, act=None))
        name = f"{node.name}.act"
        weights = ()
        if kind == "prelu":
            weights = (f"{name}.slope",)
            consts[weights[0]] = np.linspace(-0.5, 0.5, node.out_shape[1], dtype=np.float32)
        act = Node(Op.ACT, name, (node.output,), name, (node.out_shape,), node.out_shape, weights,
                   ActAttrs(kind, 0.05))  # fmt: skip
        nodes += [node, act]
        rename[node.output] = name
    out = rename.get(plan.output, plan.output)
    plan = Plan(plan.input, plan.input_shape, out, nodes, consts, plan.layers)
    verify(plan)
    return plan


@pytest.mark.slow
def test_activations_fuse_into_every_epilogue(tmp_path):
    """CEPD layers (scatter-add epilogues; without S branches, chain steps on folded channels)
    and the misc ops (affine, conv, add, linear), with an activation after each, every kind
    somewhere: all applied in their producers' kernels (no extra launch), prelu's per-channel
    slopes included on folded channels."""
    from cepd_deploy.frontend.lower import lower
    from tests.conftest import randomize_bn
    from tests.test_targets_registry import Misc, _cepd

    torch.manual_seed(0)
    tvm_target = targets.get("tvm")
    cepd = tvm_target.prepare(lower(_cepd(), (1, 16, 8, 8)))
    misc = tvm_target.prepare(lower(randomize_bn(Misc()).eval(), (1, 4, 8, 8)))
    cases = [(cepd, ("prelu", "gelu", "hardswish")), (without_sparse(cepd), ("prelu", "leaky_relu", "tanh")),
             (misc, ACTIVATIONS)]  # fmt: skip
    assert {k for _, kinds in cases for k in kinds} == set(ACTIVATIONS)
    for base, kinds in cases:
        plan = with_activations(base, kinds)
        acts = {n.name for n in plan.nodes if n.op is Op.ACT}
        _, lw = lower_plan(plan)
        assert {n.name for n in lw.acts.values()} == acts and len(acts) >= 3
        assert sum(lw.uses.values()) == sum(lower_plan(base)[1].uses.values())
        y, want = run_tvm(plan, tmp_path)
        assert np.abs(y - want).max() <= TOL * np.abs(want).max()


# -- CUDA --------------------------------------------------------------------------------------
def _cuda_executable(plan: Plan):
    from cepd_deploy.targets.tvm.build import relax_pipeline
    from cepd_deploy.targets.tvm.gpu import schedule_module
    from cepd_deploy.targets.tvm.host import make_target

    mod, lw = lower_plan(targets.get("cuda").prepare(plan), arch="gpu")
    target = make_target("cuda", arch="sm_80")
    mod = schedule_module(mod, target)
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline()), lw


def test_cuda_schedules_and_generates_every_new_kernel():
    """--target cuda: dlight schedules every kernel of the new ops and CUDA C comes out (no GPU
    needed to generate it)."""
    from cepd_deploy.targets.tvm.gpu import cuda_source

    for plan in (modern_plan(), edge_plan()):
        ex, lw = _cuda_executable(plan)
        src = cuda_source(ex)
        assert src.count("__global__") >= len(lw.kernels)
        for op in ("pad", "slice", "mul", "resize", "layernorm", "copy"):
            assert f"_{op}_kernel" in src, op


def test_cuda_schedules_degenerate_shapes():
    """--target cuda: dlight schedules every kernel of the 1x1 / 1xW / Hx1 / odd-channel Plan."""
    from cepd_deploy.targets.tvm.gpu import cuda_source

    ex, lw = _cuda_executable(degenerate_plan())
    assert cuda_source(ex).count("__global__") >= len(lw.kernels)


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="needs a CUDA device (an NVIDIA GPU)")
def test_cuda_runs_the_new_ops(tmp_path):
    for plan in (modern_plan(), edge_plan(), degenerate_plan()):
        x = np.random.default_rng(1).standard_normal(plan.input_shape).astype(np.float32)
        y = np.asarray(targets.get("cuda").runner(plan, 1, tmp_path)(x))
        want = reference(plan, x).numpy()
        assert np.abs(y - want).max() <= TOL * np.abs(want).max()
