"""PYNQ-Z1 target: the vector unit's modern-network ops (issue 19).

The stated error bounds of vector.py checked over every input of a 16-bit format; the fixed-point
output of ``tests.plans.modern_plan()`` against float; SLICE as a view; the latency and resource
model of the new ops; and (slow) the C-simulation bit-exact against the fixed-point reference: every
value in DDR, and every 16-bit input of every activation.
"""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import (
    ActAttrs,
    ConvAttrs,
    Epilogue,
    NoAttrs,
    Node,
    NormAttrs,
    Op,
    PadAttrs,
    Plan,
    ResizeAttrs,
    SliceAttrs,
)
from cepd_deploy.plan.reference import ACTIVATION_FNS
from cepd_deploy.plan.reference import run as float_run
from cepd_deploy.plan.verify import verify
from cepd_deploy.targets.pynq_z1 import csim, estimate, fixed, fxp, isa, vector
from cepd_deploy.targets.pynq_z1.blob import views
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.fixed import dequantize, value_frac
from cepd_deploy.targets.pynq_z1.groups import Group, partition
from cepd_deploy.targets.pynq_z1.program import compile_program
from cepd_deploy.targets.pynq_z1.project import tolerance
from cepd_deploy.targets.pynq_z1.target import PynqZ1
from tests.plans import modern_plan
from tests.pynq_helpers import CSIM

ALL = np.arange(-(2**15), 2**15, dtype=np.int64)  # every 16-bit input


def _one(op, in_shapes, out_shape, attrs, f_in, f_out, consts=None, weights=(), bits=16):
    """A one-node QPlan with the given formats (its consts quantised as the quantiser does)."""
    names = tuple(f"in{i}" for i in range(len(in_shapes)))
    node = Node(op, "n", names, "y", tuple(in_shapes), out_shape, weights=tuple(weights), attrs=attrs)
    plan = Plan(names[0], in_shapes[0], "y", [node], dict(consts or {}))
    q = fixed.QPlan(plan, bits, dict(zip(names, f_in)) | {"y": f_out})
    q.nodes["n"] = fixed._vector_node(q, node, list(f_in), f_out)
    return q, node


def _run(q, node, *xs):
    return fxp.HANDLERS[node.op](q, node, [np.asarray(x, dtype=np.int64) for x in xs], {})


def _act(kind, x, alpha=0.0, slopes=None):
    """torch's definition (plan/reference.py) in float64."""
    w = None if slopes is None else torch.from_numpy(np.asarray(slopes, dtype=np.float64))
    return ACTIVATION_FNS[kind](torch.from_numpy(x), ActAttrs(kind, alpha), w).numpy()


# -- error bounds, over every input of the format ---------------------------------------------------
@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "silu", "gelu"])
def test_table_activations_meet_their_bound_over_every_input(kind):
    """1 ulp + vector.ACT_ERROR[kind], for input fracs from coarse (table entries one input apart,
    asymptotes beyond) to fine (the table spans the whole input range)."""
    shape = (1, 16, 64, 64)
    worst = 0.0
    for f_in in (-2, 3, 6, 9, 11, 12, 14, 16):
        x = ALL * 2.0**-f_in
        want = _act(kind, x)
        f_out = 14 if kind in fixed.BOUNDED else value_frac(float(np.abs(want).max()), 16)
        q, node = _one(Op.ACT, [shape], shape, ActAttrs(kind), [f_in], f_out)
        y = _run(q, node, ALL.reshape(shape)).reshape(-1)
        assert (
            np.abs(np.floor(want * 2.0**f_out + 0.5)).max() < 2**15
        )  # no saturation: the bound holds everywhere
        err = np.abs(y * 2.0**-f_out - want).max()
        assert err <= 2.0**-f_out + vector.ACT_ERROR[kind], (f_in, err)
        worst = max(worst, err - 2.0**-f_out)
    assert worst > vector.ACT_ERROR[kind] / 10  # the stated figure is a bound, not a loose guess


def test_hard_sigmoid_is_correctly_rounded_then_rounded_to_the_output():
    shape = (1, 16, 64, 64)
    for f_in in range(-4, 21, 3):
        x = ALL * 2.0**-f_in
        exact = np.clip(x / 6 + 0.5, 0, 1)
        t = vector.hard_sigmoid(ALL, f_in)  # frac 15, correctly rounded (ties up)
        assert np.abs(t * 2.0**-vector.HS_FRAC - exact).max() <= 2.0**-16 + 1e-15
        q, node = _one(Op.ACT, [shape], shape, ActAttrs("hardsigmoid"), [f_in], 14)
        y = _run(q, node, ALL.reshape(shape)).reshape(-1) * 2.0**-14
        assert np.abs(y - _act("hardsigmoid", x)).max() <= 2.0**-15 + 2.0**-16, f_in


def test_hard_swish_meets_its_bound_over_every_input():
    shape = (1, 16, 64, 64)
    for f_in in (-3, 0, 5, 10, 13, 16, 20):
        x = ALL * 2.0**-f_in
        want = _act("hardswish", x)
        f_out = value_frac(float(np.abs(want).max()), 16)
        q, node = _one(Op.ACT, [shape], shape, ActAttrs("hardswish"), [f_in], f_out)
        y = _run(q, node, ALL.reshape(shape)).reshape(-1) * 2.0**-f_out
        assert np.abs(y - want).max() <= 2.0 ** -(f_out + 1) + 3 * 2.0**-16, f_in
        outside = np.abs(x) >= 3  # exactly 0 or x there: only the output's rounding
        assert np.abs(y - want)[outside].max(initial=0) <= 2.0 ** -(f_out + 1)


@pytest.mark.parametrize("kind", ["leaky_relu", "prelu"])
def test_leaky_and_prelu_meet_their_bound_over_every_input(kind):
    shape = (1, 16, 64, 64)
    rng = np.random.default_rng(0)
    slopes = np.concatenate([rng.uniform(-0.4, 0.6, 14), [1.7, 0.0]]).astype(np.float32)
    for f_in, alpha in ((6, 0.01), (12, 0.2), (15, 0.1)):
        consts, weights = ({"s": slopes}, ("s",)) if kind == "prelu" else ({}, ())
        x = ALL * 2.0**-f_in
        want = _act(kind, x.reshape(shape), alpha, slopes if kind == "prelu" else None).reshape(-1)
        f_out = value_frac(float(np.abs(want).max()), 16)
        q, node = _one(Op.ACT, [shape], shape, ActAttrs(kind, alpha), [f_in], f_out, consts, weights)
        y = _run(q, node, ALL.reshape(shape)).reshape(-1) * 2.0**-f_out
        smax = float(np.abs(slopes).max()) if kind == "prelu" else alpha
        bound = 2.0 ** -(f_out + 1) + np.abs(x) * smax * 2.0**-15
        assert (np.abs(y - want) <= bound + 1e-15).all(), f_in


def test_multiply_is_the_exact_product_rounded_once():
    rng = np.random.default_rng(1)
    a = rng.integers(-(2**15), 2**15, (1, 8, 16, 16))
    for b_shape in ((1, 8, 16, 16), (1, 8, 1, 1)):
        b = rng.integers(-(2**15), 2**15, b_shape)
        q, node = _one(Op.MUL, [a.shape, b_shape], a.shape, NoAttrs(), [9, 13], 7)
        y = _run(q, node, a, b).reshape(-1)
        pairs = zip(a.reshape(-1).tolist(), np.broadcast_to(b, a.shape).reshape(-1).tolist())
        exact = [(u * v + 2**14) // 2**15 for u, v in pairs]  # frac 9 + 13 -> 7: round half up
        assert np.array_equal(y, np.clip(exact, -(2**15), 2**15 - 1))


RESIZES = [
    ((1, 3, 7, 9), (1, 3, 8, 10), PadAttrs((0, 1, 1, 0)), Op.PAD),
    ((1, 3, 7, 9), (1, 3, 12, 11), PadAttrs((2, 3, 0, 2)), Op.PAD),
    ((1, 3, 7, 9), (1, 3, 14, 18), ResizeAttrs((14, 18), "nearest"), Op.RESIZE),
    ((1, 3, 10, 9), (1, 3, 7, 13), ResizeAttrs((7, 13), "nearest"), Op.RESIZE),
    ((1, 3, 7, 9), (1, 3, 14, 18), ResizeAttrs((14, 18), "bilinear"), Op.RESIZE),
    ((1, 3, 7, 9), (1, 3, 19, 23), ResizeAttrs((19, 23), "bilinear"), Op.RESIZE),
    ((1, 3, 12, 10), (1, 3, 5, 7), ResizeAttrs((5, 7), "bilinear"), Op.RESIZE),
    ((1, 3, 7, 9), (1, 3, 13, 20), ResizeAttrs((13, 20), "bilinear", True), Op.RESIZE),
    ((1, 3, 12, 10), (1, 3, 5, 1), ResizeAttrs((5, 1), "bilinear", True), Op.RESIZE),
]


def _float_resample(node, x):
    t = torch.from_numpy(x)
    a = node.attrs
    if node.op is Op.PAD:
        top, bottom, left, right = a.pads
        return F.pad(t, (left, right, top, bottom)).numpy()
    if a.mode == "nearest":
        return F.interpolate(t, size=a.size, mode="nearest").numpy()
    return F.interpolate(t, size=a.size, mode="bilinear", align_corners=a.align_corners).numpy()


@pytest.mark.parametrize("in_shape,out_shape,attrs,op", RESIZES)
def test_resampling_meets_its_bound(in_shape, out_shape, attrs, op):
    """Padding and nearest: exact. Bilinear: (1/2 + 1/32) ulp + 2**-15 (max|dy| + max|dx|), on
    random, smooth and checkerboard images of the whole 16-bit range."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[: in_shape[2], : in_shape[3]]
    images = [
        rng.integers(-(2**15), 2**15, in_shape),
        np.broadcast_to(np.where((yy + xx) % 2, 2**15 - 1, -(2**15)), in_shape),
        np.broadcast_to(np.round(3000 * np.sin(yy / 2.0) + 2000 * np.cos(xx / 3.0)), in_shape).astype(
            np.int64
        ),
    ]
    f = 11
    q, node = _one(op, [in_shape], out_shape, attrs, [f], f)
    for img in images:
        y = _run(q, node, img)
        want = _float_resample(node, img * 2.0**-f)
        err = np.abs(y * 2.0**-f - want).max()
        if op is Op.PAD or attrs.mode == "nearest":
            assert err == 0
        else:
            x = img * 2.0**-f
            dy = np.abs(np.diff(x, axis=2)).max(initial=0)
            dx = np.abs(np.diff(x, axis=3)).max(initial=0)
            assert err <= (0.5 + 1 / 32) * 2.0**-f + 2.0**-15 * (dy + dx)


def test_rsqrt_relative_error():
    rng = np.random.default_rng(3)
    pow2 = np.array([1 << k for k in range(62)], dtype=np.int64)
    w = np.concatenate([np.arange(1, 200_000), pow2, pow2[1:] - 1, pow2 + 1, pow2 * 3 // 2,
                        rng.integers(1, 2**62, 500_000), rng.integers(2**30, 2**32, 500_000)])  # fmt: skip
    r, e = vector.rsqrt(w)
    assert r.min() >= 2**15 and r.max() <= 2**16 and e.min() >= 0
    rel = np.abs(r * 2.0**-16 * 2.0 ** -e.astype(np.float64) * np.sqrt(w.astype(np.float64)) - 1)
    assert rel.max() <= 1.55e-5


@pytest.mark.parametrize("channels", [3, 8, 64, 768])
def test_layernorm_meets_its_bound(channels):
    rng = np.random.default_rng(channels)
    c, p = channels, 257
    shape = (1, c, 1, p)
    base = rng.integers(-(2**14), 2**14, (1, 1, 1, p))
    inputs = [
        rng.integers(-(2**15), 2**15, shape),  # full range
        base + rng.integers(-2, 3, shape),  # a large offset, a tiny spread: eps matters
        np.broadcast_to(base, shape),  # every channel equal: z = 0
        rng.integers(-40, 41, shape),  # small raw values
    ]
    scale = rng.uniform(-1.5, 1.5, c).astype(np.float32)
    shift = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    consts = {"s": scale, "b": shift}
    for f_in, eps in ((10, 1e-5), (4, 1e-6), (14, 1e-3)):
        for xq in inputs:
            x = np.asarray(xq, dtype=np.float64) * 2.0**-f_in
            mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
            z = (x - mean) / np.sqrt(var + eps)
            want = z * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
            f_out = value_frac(float(np.abs(want).max()), 16)
            q, node = _one(Op.LAYERNORM, [shape], shape, NormAttrs(eps), [f_in], f_out, consts, ("s", "b"))
            nq = q.nodes["n"]
            zq = vector.layernorm_z(xq, nq.ln_g, nq.eps_q) * 2.0**-vector.LN_ZFRAC
            assert (np.abs(zq - z) <= np.abs(z) * 2.0**-15 + 2.0**-17).all(), (f_in, eps)
            y = _run(q, node, xq) * 2.0**-f_out
            s = np.abs(scale).reshape(1, -1, 1, 1).astype(np.float64)
            bound = 2.0 ** -(f_out + 1) + s * (np.abs(z) * 2.0**-15 + 2.0**-17)
            bound += np.abs(z) * s.max() * 2.0**-15 + 2.0**-24
            assert (np.abs(y - want) <= bound).all(), (f_in, eps)


def test_layernorm_refuses_an_input_format_too_fine_for_its_eps():
    with pytest.raises(CEPDError, match="ln: layer norm eps"):
        vector.ln_params(1e-2, 1024, 32, "ln")
    g, e = vector.ln_params(1e-5, 8, 12, "ln")
    assert g > 0 and 0 < e < vector.LN_EPS_MAX


# -- the fixed-point reference against float --------------------------------------------------------
@pytest.mark.parametrize("bits", [16, 12, 8])
def test_fixed_point_modern_plan_tracks_float(bits):
    plan = modern_plan()
    rng = np.random.default_rng(4)
    q = fixed.quantize(plan, rng.standard_normal((8, 8, 8, 8)).astype(np.float32), bits)
    x = rng.standard_normal((6, 8, 8, 8)).astype(np.float32)
    y = dequantize(fxp.run(q, x), q.output_frac)
    ref = np.concatenate([float_run(plan, torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])
    assert np.abs(y - ref).max() <= tolerance(bits) * np.abs(ref).max()
    bounded = [n.output for n in plan.nodes if n.op is Op.ACT and n.attrs.kind in fixed.BOUNDED]
    assert len(bounded) == 3 and {q.frac[v] for v in bounded} == {bits - 2}


# -- SLICE: a view ------------------------------------------------------------------------------------
def _view_plan() -> Plan:
    """Two convs reading slices of a conv's output (the second group's first load must wait for the
    first conv: it reads a view of its output), a 2-D slice, LN, PReLU and an activation on 2-D
    values, LN over 1600 positions (two tiles), every resampling mode at odd sizes, and MUL."""
    rng = np.random.default_rng(5)
    consts: dict[str, np.ndarray] = {}
    nodes: list[Node] = []
    shapes = {"x": (1, 6, 40, 40)}

    def const(name, shape, scale=0.3, offset=0.0):
        consts[name] = (rng.standard_normal(shape) * scale + offset).astype(np.float32)
        return name

    def add(op, name, inputs, out, **kw):
        nodes.append(Node(op, name, inputs, name, tuple(shapes[i] for i in inputs), out, layer=name, **kw))
        shapes[name] = out
        return name

    def conv(name, x, cin, cout, hw):
        return add(Op.CONV, name, (x,), (1, cout, *hw), weights=(const(name + ".w", (cout, cin, 3, 3)),),
                   attrs=ConvAttrs((3, 3), padding=(1, 1), cin=cin, cout=cout),
                   epilogue=Epilogue(bias=const(name + ".b", (cout,))))  # fmt: skip

    c1 = conv("c1", "x", 6, 12, (40, 40))
    hi = add(Op.SLICE, "hi", (c1,), (1, 8, 40, 40), attrs=SliceAttrs(4, 12))
    mid = add(Op.SLICE, "mid", (hi,), (1, 3, 40, 40), attrs=SliceAttrs(2, 5))  # a view of a view
    c2 = conv("c2", hi, 8, 8, (40, 40))
    ln = add(Op.LAYERNORM, "ln", (c2,), (1, 8, 40, 40), attrs=NormAttrs(1e-5),
             weights=(const("ln.s", (8,), 0.2, 1.0), const("ln.b", (8,), 0.1)))  # fmt: skip
    g = add(Op.ACT, "g", (mid,), (1, 3, 40, 40), attrs=ActAttrs("sigmoid"))
    m = add(Op.MUL, "m", (ln, ln), (1, 8, 40, 40))
    p = add(Op.PAD, "p", (m,), (1, 8, 43, 41), attrs=PadAttrs((2, 1, 0, 1)))
    d = add(Op.RESIZE, "d", (p,), (1, 8, 17, 29), attrs=ResizeAttrs((17, 29), "bilinear"))
    n = add(Op.RESIZE, "n", (d,), (1, 8, 23, 13), attrs=ResizeAttrs((23, 13), "nearest"))
    u = add(Op.RESIZE, "u", (n,), (1, 8, 31, 37), attrs=ResizeAttrs((31, 37), "bilinear", True))
    c3 = conv("c3", g, 3, 8, (40, 40))
    gp = add(Op.GLOBAL_AVGPOOL, "gp", (c3,), (1, 8, 1, 1))
    gate = add(Op.ACT, "gate", (gp,), (1, 8, 1, 1), attrs=ActAttrs("hardsigmoid"))
    se = add(Op.MUL, "se", (u, gate), (1, 8, 31, 37))
    pool = add(Op.GLOBAL_AVGPOOL, "pool", (se,), (1, 8, 1, 1))
    flat = add(Op.FLATTEN, "flat", (pool,), (1, 8))
    s2 = add(Op.SLICE, "s2", (flat,), (1, 5), attrs=SliceAttrs(1, 6))
    l2 = add(Op.LAYERNORM, "l2", (s2,), (1, 5), attrs=NormAttrs(1e-6),
             weights=(const("l2.s", (5,), 0.2, 1.0), const("l2.b", (5,), 0.1)))  # fmt: skip
    pr = add(Op.ACT, "pr", (l2,), (1, 5), attrs=ActAttrs("prelu"), weights=(const("pr.s", (5,), 0.1, 0.2),))
    out = add(Op.ACT, "out", (pr,), (1, 5), attrs=ActAttrs("gelu"))
    plan = Plan("x", shapes["x"], out, nodes, consts)
    verify(plan)
    return plan


def test_slices_are_views_without_records():
    for plan in (modern_plan(), _view_plan()):
        prog = compile_program(plan, EngineConfig())
        slices = [n for n in plan.nodes if n.op is Op.SLICE]
        assert slices and not {n.name for n in slices} & {m["node"] for m in prog.meta}
        view = views(plan)
        for n in slices:
            base, off = view[n.output]
            assert base not in view and prog.arena[n.output] == prog.arena[base] + off
            if n.inputs[0] not in view:  # channels [start, stop) of a one-image value
                assert off == n.attrs.start * math.prod(n.in_shapes[0][2:])
    assert prog.arena["mid"] == prog.arena["c1"] + (4 + 2) * 40 * 40  # a view of a view


def test_a_viewed_value_stays_live_while_its_views_are_read():
    plan = _view_plan()
    items = partition(plan)
    prog = compile_program(plan, EngineConfig())
    view = views(plan)
    base = lambda v: view[v][0] if v in view else v  # noqa: E731
    sizes = {plan.input: math.prod(plan.input_shape[1:])} | {
        n.output: math.prod(n.out_shape[1:]) for n in plan
    }
    live: dict[str, tuple[int, int]] = {plan.input: (-1, -1)}
    for i, it in enumerate(items):
        outs = [it.out] if isinstance(it, Group) else [] if it.output in view else [it.output]
        ins = [it.src, it.residual, *it.reads] if isinstance(it, Group) else list(it.inputs)
        for v in outs + [base(x) for x in ins if x]:
            a, b = live.get(v, (i, i))
            live[v] = (min(a, i), max(b, i))
    live[base(plan.output)] = (live[base(plan.output)][0], len(items))
    assert live["c1"][1] > live["c2"][0]  # c1 is read (through its views) after c2 is written
    placed = sorted(v for v in live if v not in view)
    for i, u in enumerate(placed):
        for v in placed[i + 1 :]:
            if live[u][0] <= live[v][1] and live[v][0] <= live[u][1]:
                au, av = prog.arena[u], prog.arena[v]
                assert au + sizes[u] <= av or av + sizes[v] <= au, (u, v)


# -- latency and resources -----------------------------------------------------------------------------
def test_estimate_covers_every_new_op():
    plan = modern_plan()
    j = estimate(plan).to_json()
    rows = {r["name"]: r for r in j["ops"]}
    assert set(rows) == {n.name for n in plan.nodes}
    for n in plan.nodes:
        r = rows[n.name]
        assert math.isfinite(r["ms"]) and r["ms"] >= 0
        if n.op is Op.SLICE:
            assert r["cycles"] == 0 and r["ddr_bytes"] == 0  # a view
        else:
            assert r["cycles"] > 0 and r["ddr_bytes"] > 0
    assert sum(r["cycles"] for r in j["ops"]) == pytest.approx(j["totals"]["cycles"], rel=1e-3)
    assert j["resources"]["dsp"] == 216 and j["resources"]["breakdown"]["bram18"]["act_table"] == 4


def _single(op, c, h, w, **kw) -> Plan:
    shape = (1, c, h, w)
    consts = {"s": np.ones(c, np.float32), "b": np.zeros(c, np.float32)}
    if op is Op.RESIZE:
        out, attrs, weights = (1, c, 2 * h + 1, 2 * w - 1), ResizeAttrs((2 * h + 1, 2 * w - 1), **kw), ()
    elif op is Op.PAD:
        out, attrs, weights = (1, c, h + 2, w + 2), PadAttrs((1, 1, 1, 1)), ()
    elif op is Op.LAYERNORM:
        out, attrs, weights = shape, NormAttrs(), ("s", "b")
    elif op is Op.MUL:
        out, attrs, weights = shape, NoAttrs(), ()
    else:
        out, attrs, weights = shape, ActAttrs(**kw), ("s",) if kw["kind"] == "prelu" else ()
    inputs = ("x", "x") if op is Op.MUL else ("x",)
    node = Node(op, "n", inputs, "y", (shape,) * len(inputs), out, weights=weights, attrs=attrs)
    return Plan("x", shape, "y", [node], consts)


SIZED = [(Op.ACT, {"kind": k}) for k in ("sigmoid", "hardswish", "prelu", "leaky_relu")] + [
    (Op.MUL, {}), (Op.PAD, {}), (Op.LAYERNORM, {}), (Op.RESIZE, {"mode": "nearest"}),
    (Op.RESIZE, {"mode": "bilinear"}), (Op.RESIZE, {"mode": "bilinear", "align_corners": True}),
]  # fmt: skip


@pytest.mark.parametrize("op,kw", SIZED)
def test_latency_grows_with_size_and_respects_throughput(op, kw):
    cfg = EngineConfig()
    cycles = []
    for h in (8, 16, 32, 64):
        plan = _single(op, 16, h, h, **kw)
        (row,) = estimate(plan).to_json()["ops"]
        elems = 16 * math.prod(plan.nodes[0].out_shape[2:])
        assert math.isfinite(row["cycles"]) and row["cycles"] >= elems / cfg.vec_lanes  # lanes bound
        assert row["ddr_bytes"] >= 2 * elems  # the output is written once at least
        cycles.append(row["cycles"])
    assert all(a < b for a, b in zip(cycles, cycles[1:]))
    assert 2.0 < cycles[-1] / cycles[-2] < 5.0  # four times the elements: near-linear at size


def test_vector_costs_follow_the_records():
    from cepd_deploy.targets.pynq_z1.config import load_board
    from cepd_deploy.targets.pynq_z1.cycles import bandwidth, vec_cost

    cfg = EngineConfig()
    bw = bandwidth(cfg, load_board())
    base = dict(channels=64, hw=1024, a_addr=0, out_addr=0)
    table = vec_cost(isa.record(isa.Kind.VEC, vop=isa.VecOp.ACT, fn=isa.ActFn.TABLE, **base), cfg, bw)
    hard = vec_cost(isa.record(isa.Kind.VEC, vop=isa.VecOp.ACT, fn=isa.ActFn.HSWISH, **base), cfg, bw)
    # the table is loaded first (its bytes also share the DDR with the streams)
    assert table.cycles - hard.cycles >= bw.latency + bw.transfer(1, 4 * isa.ACT_SEGS)
    assert table.rd_bytes - hard.rd_bytes == 4 * isa.ACT_SEGS
    assert hard.cycles >= 64 * 1024 / cfg.vec_lanes and (hard.rd_bytes, hard.wr_bytes) == (2**17, 2**17)
    same = vec_cost(isa.record(isa.Kind.VEC, vop=isa.VecOp.MUL, b_addr=0, **base), cfg, bw)
    bcast = vec_cost(isa.record(isa.Kind.VEC, vop=isa.VecOp.MUL, b_addr=0, b_bcast=1, **base), cfg, bw)
    assert same.rd_bytes == 2 * 2**17 and bcast.rd_bytes == 2**17 + 2 * 64 and bcast.cycles < same.cycles


def test_padding_and_nearest_stream_in_one_pass():
    """Every weight 0: one streaming pass per channel (DDR-bound at 4 lanes), no vertical passes."""
    for op, kw, direct in (
        (Op.PAD, {}, 1),
        (Op.RESIZE, {"mode": "nearest"}, 1),
        (Op.RESIZE, {"mode": "bilinear"}, 0),
    ):
        plan = _single(op, 64, 56, 56, **kw)
        (r,) = [r for r in compile_program(plan, EngineConfig()).records if r["kind"] == isa.Kind.VEC]
        assert r["rs_direct"] == direct and (r["rs_vpass"] == 0) == bool(direct)
        (row,) = estimate(plan).to_json()["ops"]
        per_element = row["cycles"] / (64 * math.prod(plan.nodes[0].out_shape[2:]))
        assert per_element < 0.35 if direct else per_element > 0.5


def test_a_resize_wider_than_the_line_buffer_is_refused():
    plan = _single(Op.RESIZE, 2, 4, 700, mode="nearest")
    with pytest.raises(CEPDError, match="n: resize from 700 to 1399 columns needs .* line buffer"):
        estimate(plan)


# -- C-simulation ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CEPD_DEPLOY_CACHE", str(tmp_path_factory.mktemp("cepd-cache")))
    yield csim.build_sim(EngineConfig())
    mp.undo()


@pytest.fixture(scope="module")
def testbench(sim, tmp_path_factory):
    from cepd_deploy.targets.pynq_z1.render import render_engine

    d = tmp_path_factory.mktemp("tb")
    render_engine(EngineConfig(), d)
    return csim.build_testbench(sim, d / "tb", d / "tb.exe")


def _arena(tb, tmp_path, prog, q, xq) -> np.ndarray:
    """The arena after the engine ran the program on one quantised image."""
    (tmp_path / "w.bin").write_bytes(prog.blob(q))
    np.ascontiguousarray(xq, dtype="<i2").tofile(tmp_path / "in.bin")
    args = [str(tb), str(tmp_path / "w.bin"), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), "1"]
    subprocess.run([*args, str(tmp_path / "arena.bin")], check=True, capture_output=True)
    arena = np.fromfile(tmp_path / "arena.bin", dtype="<i2")
    assert arena[0] == isa.STATUS["ST_OK"]
    return arena


def _all_values_match(tb, tmp_path, plan, q, xq):
    prog = compile_program(plan, EngineConfig(), q, reuse_arena=False)
    arena = _arena(tb, tmp_path, prog, q, xq)
    env = fxp.run(q, xq, quantized=True, keep=True)
    for value, off in prog.arena.items():
        ref = env[value].reshape(-1)
        assert np.array_equal(arena[off : off + ref.size], ref), value


@pytest.mark.slow
@CSIM
@pytest.mark.parametrize("which", ["modern", "views"])
def test_every_ddr_value_of_the_new_ops_matches_the_reference(testbench, tmp_path, which):
    plan = modern_plan() if which == "modern" else _view_plan()
    rng = np.random.default_rng(6)
    q = fixed.quantize(plan, rng.standard_normal((4, *plan.input_shape[1:])), 16)
    xq = fxp.quantize_input(q, rng.standard_normal((1, *plan.input_shape[1:])))
    _all_values_match(testbench, tmp_path, plan, q, xq)


def _activations_plan() -> Plan:
    shape = (1, 16, 64, 64)
    slopes = np.linspace(-0.5, 1.5, 16).astype(np.float32)
    nodes = [Node(Op.ACT, k, ("x",), k, (shape,), shape, weights=("s",) if k == "prelu" else (),
                  attrs=ActAttrs(k, 0.15)) for k in ("sigmoid", "hardsigmoid", "silu", "hardswish", "gelu",
                                                      "tanh", "leaky_relu", "prelu")]  # fmt: skip
    return Plan("x", shape, "prelu", nodes, {"s": slopes})


@pytest.mark.slow
@CSIM
@pytest.mark.parametrize("f_in", [3, 10, 14])
def test_every_input_of_every_activation_is_bit_exact(testbench, tmp_path, f_in):
    """Every 16-bit input through every activation: table lookups (f_in 3), interpolation and
    asymptotes (10), interpolation over the whole range (14)."""
    plan = _activations_plan()
    samples = np.random.default_rng(7).standard_normal((2, 16, 64, 64)) * 2.0 ** (12 - f_in)
    maxabs = fixed.calibrate(plan, samples)
    maxabs["x"] = 0.75 * 2.0 ** (14 - f_in)  # frac f_in after one bit of headroom
    q = fixed.quantize(plan, None, 16, maxabs=maxabs)
    assert q.input_frac == f_in
    _all_values_match(testbench, tmp_path, plan, q, ALL.reshape(1, 16, 64, 64))


@pytest.mark.slow
@CSIM
@pytest.mark.usefixtures("sim")  # its engine cache
@pytest.mark.parametrize("bits", [16, 8])
def test_modern_plan_builds_bit_exact_within_tolerance(tmp_path, bits):
    opts = PynqZ1.Options(csim=True, golden=3, bits=bits, label="modern")
    built = PynqZ1().build(modern_plan(), tmp_path / "p", opts)
    c = built.figures["csim"]
    assert built.ok and c["bit_exact"] and c["mismatches"] == 0 and c["images"] == 3
    assert c["within_tolerance"] and c["max_abs_err_vs_float"] <= c["tolerance"]
    assert built.figures["totals"] == PynqZ1().estimate(modern_plan(), opts).figures["totals"]
