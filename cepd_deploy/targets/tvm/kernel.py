"""What every TVM kernel is made of: a TE workload, its constants, its epilogue and its schedule.

A :class:`Kernel` is one PrimFunc: runtime inputs, constant inputs (packed weights, epilogue
vectors), one output. Its TE compute is the workload MetaSchedule and the GPU rules start from;
``prepare`` (layout steps, e.g. flattening a padded copy) then ``schedule`` make the hand-written
x86 schedule. Kernels with the same ``key`` are the same PrimFunc (their constants differ).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

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
    (b, o) to the Plan channel (b % outer) * channels + o.
    """

    scale: bool = False
    bias: bool = False
    residual: bool = False
    act: str | None = None
    scatter: int = 0
    outer: int = 1
    s_rows: int = 0  # rows of the S buffer (default scatter + 1; more when it shares a buffer)

    @property
    def key(self) -> str:
        flags = "".join(c for c, on in zip("sbr", (self.scale, self.bias, self.residual)) if on)
        rows = f"r{self.s_rows}" if self.s_rows else ""
        return f"e{flags}{self.act or ''}{f'x{self.scatter}{rows}' if self.scatter else ''}o{self.outer}"


@dataclass
class EpiValues:
    """The constants of an :class:`Epi` (numpy, in the Plan's channel order)."""

    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    inv: np.ndarray | None = None  # int32 (channels,): row of s per channel, ``scatter`` if none


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

    @property
    def runtime(self) -> list[te.Tensor]:
        return [t for t in (self.res, self.s) if t is not None]

    @property
    def consts(self) -> list[te.Tensor]:
        return [t for t in (self.scale, self.bias, self.inv) if t is not None]

    def values(self, v: EpiValues) -> list[np.ndarray]:
        out = []
        if self.scale is not None:
            out.append(np.asarray(v.scale, np.float32))
        if self.bias is not None:
            out.append(np.asarray(v.bias, np.float32))
        if self.inv is not None:
            out.append(np.asarray(v.inv, np.int32))
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
        return activation(v, e.act)


def activation(v, act: str | None):
    """The TE expression ``v`` after ``act`` ("relu", "relu6" or None)."""
    if act == "relu":
        return te.max(v, tirx.const(0.0, "float32"))
    if act == "relu6":
        return te.min(te.max(v, tirx.const(0.0, "float32")), tirx.const(6.0, "float32"))
    if act is not None:
        raise ValueError(f"unknown activation {act!r}")
    return v


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


def schedule_flat(sch: Schedule, block: str, lanes: int = 16) -> None:
    """A memory-bound loop nest: outer loops fused and parallel, the innermost vectorised
    (split into ``lanes``-wide vectors, the tail predicated, when it is long)."""
    b = sch.get_sblock(block)
    loops = sch.get_loops(b)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    inner = loops[-1]
    if int(sch.get(inner).extent) > 4 * lanes:
        _, inner = sch.split(inner, [None, lanes])
    sch.vectorize(inner)


def schedule_pad(sch: Schedule, block: str = "xp", lanes: int = 16) -> None:
    """A padding copy: parallel over its outer axes, then a vectorised fill of the border value
    and a vectorised, condition-free copy of the interior."""
    b = sch.get_sblock(block)
    loops = sch.get_loops(b)
    outer = sch.fuse(*loops[:2]) if len(loops) > 2 else loops[0]
    sch.parallel(outer)
    fill = sch.decompose_padding(b, sch.get_loops(b)[1])
    for blk in (fill, b):
        inner = sch.get_loops(blk)[-1]
        if int(sch.get(inner).extent) > 4 * lanes:
            _, inner = sch.split(inner, [None, lanes])
        sch.vectorize(inner)


def schedule_rows(sch: Schedule, padded: bool, vectorize_out: bool = True) -> None:
    """``y`` (N, C, H, W) from a reduction ``acc`` with the same leading axes: parallel over the
    fused (N, C, H) rows, each row's ``acc`` computed in local scope inside it with the
    reduction loops outside its vectorised pixel loop; ``y``'s pixel loop vectorised too unless
    ``vectorize_out`` is false (a strided read of ``acc`` would be scalarised)."""
    if padded:
        schedule_pad(sch)
    yb = sch.get_sblock("y")
    b, ch, i, j = sch.get_loops(yb)
    outer = sch.fuse(b, ch, i)
    sch.parallel(outer)
    blk = sch.get_sblock("acc")
    sch.compute_at(blk, outer)
    sch.set_scope(blk, 0, "local")
    jj, *red = sch.get_loops(blk)[1:]  # unit reduction loops are elided
    if red:
        sch.reorder(*red, jj)
    sch.vectorize(jj)
    init = sch.decompose_reduction(blk, red[0] if red else jj)
    sch.vectorize(sch.get_loops(init)[-1])
    if vectorize_out:
        sch.vectorize(j)


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most``."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)
