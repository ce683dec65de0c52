"""What every TVM kernel is made of: a TE workload, its constants, its epilogue and its schedule.

A :class:`Kernel` is one PrimFunc: runtime inputs, constant inputs (packed weights, epilogue
vectors), one output. Its TE compute is the workload MetaSchedule and the GPU rules start from;
``prepare`` (layout steps, e.g. flattening a padded copy) then ``schedule`` make the hand-written
x86 schedule. Kernels with the same ``key`` are the same PrimFunc (their constants differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tvm import te, tirx
from tvm.s_tir import SBlockRealize, Schedule

ScheduleFn = Callable[[Schedule], None]


def cdiv(a: int, b: int) -> int:
    """``a / b`` rounded up (positive ``b``)."""
    return -(-a // b)


@dataclass(frozen=True)
class Epi:
    """A Plan epilogue as a kernel applies it, plus an optional folded scatter-add.

    Order: v += s[b, inv[o]] (``scatter``: the S branch's rows, and a zero row for the channels
    it does not touch, inside an ``s_rows``-row buffer);
    v = v*scale[c] + bias[c]; v += residual; act. ``outer`` maps a folded batch/channel pair
    (b, o) to the Plan channel (b % outer) * channels + o. ``act`` is relu, relu6 or a Plan
    ACT kind (:data:`~cepd_deploy.plan.ir.ACTIVATIONS`): ``alpha`` is leaky_relu's slope,
    ``slopes`` the number of prelu slopes (the channels, or 1).
    """

    scale: bool = False
    bias: bool = False
    residual: bool = False
    act: str | None = None
    scatter: int = 0
    outer: int = 1
    s_rows: int = 0  # rows of the S buffer (default scatter + 1; more when it shares a buffer)
    alpha: float = 0.0  # leaky_relu's negative slope
    slopes: int = 0  # prelu: how many slopes (channels, or 1)

    @property
    def key(self) -> str:
        flags = "".join(c for c, on in zip("sbr", (self.scale, self.bias, self.residual)) if on)
        rows = f"r{self.s_rows}" if self.s_rows else ""
        act = self.act or ""
        if self.act == "leaky_relu":
            act += f"{self.alpha!r}"
        elif self.act == "prelu":
            act += str(self.slopes)
        return f"e{flags}{act}{f'x{self.scatter}{rows}' if self.scatter else ''}o{self.outer}"


@dataclass
class EpiValues:
    """The constants of an :class:`Epi` (numpy, in the Plan's channel order)."""

    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    inv: np.ndarray | None = None  # int32 (channels,): row of s per channel, ``scatter`` if none
    slope: np.ndarray | None = None  # prelu's slopes: (channels,) or (1,)


class EpiTensors:
    """TE placeholders of an epilogue for a kernel output of shape (B, O, *spatial)."""

    def __init__(self, epi: Epi, out_shape: Sequence[int]) -> None:
        self.epi = epi
        b, o, *sp = out_shape
        self.cout = o
        c = o * epi.outer
        self.res = te.placeholder(tuple(out_shape), name="res") if epi.residual else None
        self.s = te.placeholder((b, epi.s_rows or epi.scatter + 1, *sp), name="s") if epi.scatter else None
        self.scale = te.placeholder((c,), name="scale") if epi.scale else None
        self.bias = te.placeholder((c,), name="bias") if epi.bias else None
        self.inv = te.placeholder((c,), "int32", name="inv") if epi.scatter else None
        self.slope = te.placeholder((epi.slopes,), name="slope") if epi.act == "prelu" else None

    @property
    def runtime(self) -> list[te.Tensor]:
        return [t for t in (self.res, self.s) if t is not None]

    @property
    def consts(self) -> list[te.Tensor]:
        return [t for t in (self.scale, self.bias, self.inv, self.slope) if t is not None]

    def values(self, v: EpiValues) -> list[np.ndarray]:
        out = []
        if self.scale is not None:
            out.append(np.asarray(v.scale, np.float32))
        if self.bias is not None:
            out.append(np.asarray(v.bias, np.float32))
        if self.inv is not None:
            out.append(np.asarray(v.inv, np.int32))
        if self.slope is not None:
            out.append(np.asarray(v.slope, np.float32).reshape(self.epi.slopes))
        return out

    def __call__(self, v, b, o, *sp):
        e = self.epi
        ch = o if e.outer == 1 else (b % e.outer) * self.cout + o
        if self.s is not None:
            v = v + self.s[(b, self.inv[ch], *sp)]
        if self.scale is not None:
            v = v * self.scale[ch]
        if self.bias is not None:
            v = v + self.bias[ch]
        if self.res is not None:
            v = v + self.res[(b, o, *sp)]
        slope = None
        if self.slope is not None:
            slope = self.slope[ch if e.slopes > 1 else 0]
        return activation(v, e.act, e.alpha, slope)


def _f32(c: float):
    return tirx.const(c, "float32")


def _relu6(v):
    return te.min(te.max(v, _f32(0.0)), _f32(6.0))


def _poly(x, coefs):
    """Horner: coefs[0] * x^(k-1) + ... + coefs[-1]."""
    p = _f32(coefs[0])
    for c in coefs[1:]:
        p = p * x + _f32(c)
    return p


# exp, erf and tanh as float32 expressions that vectorise (for TVM's own intrinsics LLVM calls
# libm's scalar expf and erff), each within a few ulp of libm. They repeat their argument's
# expression instead of binding it (MetaSchedule cannot estimate the FLOPs of a Let); LLVM and
# nvcc eliminate the common subexpressions.
def fast_exp(v):
    """exp(v): Cephes' expf (Cody-Waite reduction by ln 2, degree-7 polynomial); 0 below -88.38,
    inf above 88.38 (where libm overflows at 88.72)."""
    x = te.max(te.min(v, _f32(88.3762626647950)), _f32(-88.3762626647949))
    n = te.floor(x * _f32(1.44269504088896341) + _f32(0.5))
    f = x - n * _f32(0.693359375) - n * _f32(-2.12194440e-4)
    y = _poly(f, (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                  5.0000001201e-1)) * f * f + f + _f32(1.0)  # fmt: skip
    return tirx.reinterpret("float32", tirx.shift_left((n + _f32(127.0)).astype("int32"), 23)) * y


def _rational(v, bound: float, num, den):
    """x * num(x^2) / den(x^2) with x = v clamped to [-bound, bound]."""
    x = te.max(te.min(v, _f32(bound)), _f32(-bound))
    x2 = x * x
    return x * _poly(x2, num) / _poly(x2, den)


def fast_erf(v):
    """erf(v): Eigen's rational approximation on [-4, 4] (+-1 beyond)."""
    num = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
           -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # fmt: skip
    den = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
           -1.42647390514189e-02)  # fmt: skip
    return _rational(v, 4.0, num, den)


def fast_tanh(v):
    """tanh(v): Eigen's rational approximation on [-9, 9] (+-1 beyond)."""
    num = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)  # fmt: skip
    den = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
    return _rational(v, 9.0, num, den)


#: TE expressions of every activation an epilogue applies (torch's definitions, float32)
_ACTIVATIONS = {
    "relu": lambda v, a, s: te.max(v, _f32(0.0)),
    "relu6": lambda v, a, s: _relu6(v),
    "sigmoid": lambda v, a, s: _f32(1.0) / (_f32(1.0) + fast_exp(-v)),
    "hardsigmoid": lambda v, a, s: _relu6(v + _f32(3.0)) / _f32(6.0),
    "silu": lambda v, a, s: v / (_f32(1.0) + fast_exp(-v)),
    "hardswish": lambda v, a, s: v * _relu6(v + _f32(3.0)) / _f32(6.0),
    "gelu": lambda v, a, s: v * _f32(0.5) * (_f32(1.0) + fast_erf(v * _f32(math.sqrt(0.5)))),
    "tanh": lambda v, a, s: fast_tanh(v),
    "leaky_relu": lambda v, a, s: tirx.Select(v > _f32(0.0), v, v * _f32(a)),
    "prelu": lambda v, a, s: tirx.Select(v > _f32(0.0), v, v * s),
}


def activation(v, act: str | None, alpha: float = 0.0, slope=None):
    """The TE expression ``v`` after ``act`` (relu, relu6, a Plan ACT kind, or None); ``alpha`` is
    leaky_relu's negative slope, ``slope`` prelu's (a TE expression)."""
    if act is None:
        return v
    if act not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}")
    if act == "prelu" and slope is None:
        raise ValueError("prelu needs its slope")
    return _ACTIVATIONS[act](v, alpha, slope)


@dataclass
class Kernel:
    """One PrimFunc: ``output = f(*inputs, *consts)``."""

    key: str
    inputs: list[te.Tensor]
    consts: list[te.Tensor]
    output: te.Tensor
    schedule: ScheduleFn | None = None
    prepare: ScheduleFn | None = None
    macs: int = 0
    label: str = ""  # short human description for progress output

    def workload(self) -> tirx.PrimFunc:
        """The unscheduled PrimFunc: what MetaSchedule tunes and the GPU rules schedule."""
        return te.create_prim_func([*self.inputs, *self.consts, self.output])

    def scheduled(self) -> tirx.PrimFunc:
        """The PrimFunc with the hand-written x86 schedule (after ``prepare``'s layout steps)."""
        sch = Schedule(self.workload())
        for step in (self.prepare, self.schedule):
            if step is not None:
                step(sch)
        return sch.mod["main"]


@dataclass
class Call:
    """A kernel applied: its constants' values, in ``kernel.consts`` order."""

    kernel: Kernel
    consts: list[np.ndarray] = field(default_factory=list)


def pad_input(x: te.Tensor, shape: Sequence[int], pad: Sequence[int], fill: float = 0.0, name: str = "xp"):
    """x (B, C, H, W) zero- (or ``fill``-) padded by (top, left) into ``shape``; None if a no-op."""
    b, c, h, w = (int(s) for s in x.shape)
    ph, pw = pad
    if (ph, pw) == (0, 0) and tuple(shape[2:]) == (h, w):
        return None
    fv = tirx.const(fill, "float32")

    def f(n, ci, r, s):
        inside = te.all(r >= ph, r < h + ph, s >= pw, s < w + pw)
        return te.if_then_else(inside, x[n, ci, r - ph, s - pw], fv)

    return te.compute(tuple(shape), f, name=name)


def vectorize(sch: Schedule, loop, lanes: int = 16) -> None:
    """Vectorise ``loop``, split into ``lanes``-wide vectors (the tail predicated) when it is long;
    a unit loop is left as it is."""
    extent = int(sch.get(loop).extent)
    if extent == 1:
        return
    if extent > 4 * lanes:
        _, loop = sch.split(loop, [None, lanes])
    sch.vectorize(loop)


def _realize(sch: Schedule, block) -> SBlockRealize:
    """The SBlockRealize of ``block`` (found under its innermost loop)."""
    name = sch.get(block).name_hint
    loops = sch.get_loops(block)
    todo = [sch.get(loops[-1]) if loops else sch.mod["main"].body]
    while todo:
        s = todo.pop()
        if isinstance(s, SBlockRealize):
            if s.block.name_hint == name:
                return s
            todo.append(s.block.body)
        elif isinstance(s, tirx.SeqStmt):
            todo.extend(s.seq)
        elif hasattr(s, "body"):
            todo.append(s.body)
    raise ValueError(f"block {name!r} not found")


def inner_loops(sch: Schedule, block, depth: int) -> tuple[list, list]:
    """``block``'s loops below its first ``depth``: (spatial, reduction), each in nesting order. A
    loop is a reduction loop if it feeds a reduction block iter. ``compute_at`` makes no loop for
    a unit extent, so either list may be empty (a 1x1 output, a 1-wide window, one channel)."""
    realize = _realize(sch, block)
    reduce_vars = [
        v
        for iv, value in zip(realize.block.iter_vars, realize.iter_values, strict=True)
        if iv.iter_type != tirx.IterVar.DataPar
        for v in tirx.analysis.undefined_vars(value, [])
    ]
    spatial, red = [], []
    for loop in sch.get_loops(block)[depth:]:
        var = sch.get(loop).loop_var
        (red if any(var.same_as(v) for v in reduce_vars) else spatial).append(loop)
    return spatial, red


def vectorize_inner(sch: Schedule, block, depth: int, lanes: int = 16) -> None:
    """Vectorise the innermost loop of a data-parallel ``block`` if it has one below its first
    ``depth`` loops (none when the outer loops cover it all)."""
    loops = sch.get_loops(block)[depth:]
    if loops:
        vectorize(sch, loops[-1], lanes)


def schedule_flat(sch: Schedule, block: str, lanes: int = 16) -> None:
    """A memory-bound loop nest: outer loops fused and parallel, the innermost vectorised
    (split into ``lanes``-wide vectors, the tail predicated, when it is long)."""
    b = sch.get_sblock(block)
    loops = sch.get_loops(b)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    vectorize(sch, loops[-1], lanes)


def schedule_pad(sch: Schedule, block: str = "xp", lanes: int = 16) -> None:
    """A padding copy: parallel over its outer axes, then a vectorised fill of the border value
    and a vectorised, condition-free copy of the interior. An interior one pixel wide that ends
    the padded axis (padding before it only) makes the condition ``r == pad``, not a range: such
    a copy keeps its condition (one vectorised loop)."""
    b = sch.get_sblock(block)
    loops = sch.get_loops(b)
    outer = sch.fuse(*loops[:2]) if len(loops) > 2 else loops[0]
    sch.parallel(outer)
    blocks = [b]
    if len(loops) > 2 and sch.can_decompose_padding(b, sch.get_loops(b)[1]):
        blocks.insert(0, sch.decompose_padding(b, sch.get_loops(b)[1]))
    for blk in blocks:
        vectorize_inner(sch, blk, 1, lanes)


def schedule_rows(sch: Schedule, padded: bool, vectorize_out: bool = True) -> None:
    """``y`` (N, C, H, W) from a reduction ``acc`` with the same leading axes: parallel over the
    fused (N, C, H) rows, each row's ``acc`` computed in local scope inside it with the
    reduction loops outside its vectorised pixel loop; ``y``'s pixel loop vectorised too unless
    ``vectorize_out`` is false (a strided read of ``acc`` would be scalarised). Unit loops (a
    one-pixel row, a 1-wide window, one input channel) are not there to reorder or vectorise."""
    if padded:
        schedule_pad(sch)
    yb = sch.get_sblock("y")
    b, ch, i, j = sch.get_loops(yb)
    outer = sch.fuse(b, ch, i)
    sch.parallel(outer)
    blk = sch.get_sblock("acc")
    sch.compute_at(blk, outer)
    sch.set_scope(blk, 0, "local")
    pixels, red = inner_loops(sch, blk, 1)  # at most one pixel loop
    if red and pixels:
        sch.reorder(*red, *pixels)
    for jj in pixels:
        sch.vectorize(jj)
    if red or pixels:
        init = sch.decompose_reduction(blk, (red or pixels)[0])
        if pixels:
            sch.vectorize(sch.get_loops(init)[-1])
    if vectorize_out and int(sch.get(j).extent) > 1:
        sch.vectorize(j)


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most``."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)
