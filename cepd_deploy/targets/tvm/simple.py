"""Memory-bound kernels: elementwise ops with the epilogue, channel permute/concat, pooling.

All work on NCHW (or NF) tensors; the schedule fuses the outer loops into one parallel loop
and vectorises over the innermost (contiguous) axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from cepd_deploy.targets.tvm.kernel import (
    Call,
    Epi,
    EpiTensors,
    EpiValues,
    Kernel,
    pad_input,
    schedule_flat,
    schedule_rows,
)


def _shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def eltwise(
    kind: str,
    shape: Sequence[int],
    epi: Epi,
    values: EpiValues,
    *,
    affine: tuple[np.ndarray, np.ndarray] | None = None,
) -> Call:
    """y = epilogue(f(inputs)); f: ``copy`` (x), ``add`` (a + b) or ``affine`` (x*scale + shift)."""
    shape = tuple(int(s) for s in shape)
    ins = [te.placeholder(shape, name="x")] + ([te.placeholder(shape, name="x2")] if kind == "add" else [])
    consts: list[te.Tensor] = []
    if kind == "affine":
        consts = [te.placeholder((shape[1],), name="a_scale"), te.placeholder((shape[1],), name="a_shift")]
    ep = EpiTensors(epi, shape)

    def f(*idx):
        v = ins[0][idx]
        if kind == "add":
            v = v + ins[1][idx]
        elif kind == "affine":
            v = v * consts[0][idx[1]] + consts[1][idx[1]]
        return ep(v, *idx)

    y = te.compute(shape, f, name="y")
    kern = Kernel(
        f"{kind}_{_shape_key(shape)}_{epi.key}",
        [*ins, *ep.runtime],
        [*consts, *ep.consts],
        y,
        lambda s: schedule_flat(s, "y"),
        label=f"{kind} {_shape_key(shape)}",
    )
    vals = [np.asarray(a, np.float32) for a in affine] if affine is not None else []
    return Call(kern, [*vals, *ep.values(values)])


def permute(
    shape: Sequence[int], axes: Sequence[int], perm: Sequence[int], epi: Epi, values: EpiValues
) -> Call:
    """Reorder the factored channel axes: (N, *axes, H, W) -> (N, *axes[perm], H, W)."""
    n, c, h, w = (int(s) for s in shape)
    axes, perm = tuple(int(a) for a in axes), tuple(int(p) for p in perm)
    out_axes = tuple(axes[p] for p in perm)
    strides = [math.prod(axes[i + 1 :]) for i in range(len(axes))]
    x = te.placeholder((n, c, h, w), name="x")
    ep = EpiTensors(epi, (n, c, h, w))

    def src(co):
        digits, rest = [], co
        for size in reversed(out_axes):
            digits.append(rest % size)
            rest = rest // size
        digits.reverse()  # digits[k] indexes out_axes[k] = axes[perm[k]]
        return sum((digits[k] * strides[perm[k]] for k in range(len(perm))), tirx.const(0, "int32"))

    y = te.compute((n, c, h, w), lambda b, co, i, j: ep(x[b, src(co), i, j], b, co, i, j), name="y")
    key = f"permute_{_shape_key(shape)}_{_shape_key(axes)}_{_shape_key(perm)}_{epi.key}"
    return Call(
        Kernel(
            key,
            [x, *ep.runtime],
            ep.consts,
            y,
            lambda s: schedule_flat(s, "y"),
            label=f"permute {_shape_key(shape)}",
        ),
        ep.values(values),
    )


def concat(shapes: Sequence[Sequence[int]]) -> Call:
    """Concatenate along channels."""
    xs = [te.placeholder(tuple(int(v) for v in s), name=f"x{k}") for k, s in enumerate(shapes)]
    n, _, *sp = (int(v) for v in shapes[0])
    starts = np.cumsum([0] + [int(s[1]) for s in shapes])
    total = int(starts[-1])

    def f(b, c, *idx):
        v = xs[-1][(b, c - int(starts[-2]), *idx)]
        for k in range(len(xs) - 2, -1, -1):
            v = te.if_then_else(c < int(starts[k + 1]), xs[k][(b, c - int(starts[k]), *idx)], v)
        return v

    y = te.compute((n, total, *sp), f, name="y")
    key = "concat_" + "_".join(_shape_key(s) for s in shapes)
    return Call(Kernel(key, xs, [], y, lambda s: schedule_flat(s, "y"), label=key))


def pool(kind: str, shape: Sequence[int], out_shape: Sequence[int], kernel, stride, padding) -> Call:
    """Max or average pooling (average counts the padding, PyTorch's ceil-mode windows)."""
    n, c, h, w = (int(s) for s in shape)
    ho, wo = (int(s) for s in out_shape[2:])
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    key = f"{kind}pool_{_shape_key(shape)}_k{kh}x{kw}s{sh}x{sw}p{ph}x{pw}_o{ho}x{wo}"
    if (kh, kw, ph, pw) == (1, 1, 0, 0):  # a subsample (strided 1x1 convs start with one)
        x = te.placeholder((n, c, h, w), name="x")
        y = te.compute((n, c, ho, wo), lambda b, ch, i, j: x[b, ch, i * sh, j * sw], name="y")
        return Call(
            Kernel(key, [x], [], y, lambda s: schedule_flat(s, "y"), label=f"subsample {_shape_key(shape)}")
        )
    hp, wp = max((ho - 1) * sh + kh, h + ph), max((wo - 1) * sw + kw, w + pw)
    x = te.placeholder((n, c, h, w), name="x")
    fill = -3.0e38 if kind == "max" else 0.0
    xp = pad_input(x, (n, c, hp, wp), (ph, pw), fill=fill, name="xp")
    src = x if xp is None else xp
    r, u = te.reduce_axis((0, kh), "r"), te.reduce_axis((0, kw), "u")
    red = te.max if kind == "max" else te.sum
    # every column at stride 1 (contiguous vectors), then pick each sw-th: strided vector
    # loads would be scalarised
    cols = (wo - 1) * sw + 1
    acc = te.compute(
        (n, c, ho, cols), lambda b, ch, i, j: red(src[b, ch, i * sh + r, j + u], axis=[r, u]), name="acc"
    )

    def finish(b, ch, i, j):
        if kind == "max":
            return acc[b, ch, i, j * sw]
        # PyTorch: the window, clipped to the padded input, counts (count_include_pad=True)
        hs, ws = i * sh - ph, j * sw - pw
        he, we = te.min(hs + kh, h + ph), te.min(ws + kw, w + pw)
        return acc[b, ch, i, j * sw] / ((he - hs) * (we - ws)).astype("float32")

    y = te.compute((n, c, ho, wo), finish, name="y")

    def schedule(sch: Schedule) -> None:
        schedule_rows(sch, padded=xp is not None, vectorize_out=sw == 1)

    return Call(Kernel(key, [x], [], y, schedule, label=f"{kind}pool {_shape_key(shape)}"))


def global_avgpool(shape: Sequence[int]) -> Call:
    """Mean over H x W of an (N, C, H, W) input, to (N, C, 1, 1); parallel over (N, C)."""
    n, c, h, w = (int(s) for s in shape)
    x = te.placeholder((n, c, h, w), name="x")
    r, u = te.reduce_axis((0, h), "r"), te.reduce_axis((0, w), "u")
    acc = te.compute((n, c), lambda b, ch: te.sum(x[b, ch, r, u], axis=[r, u]), name="acc")
    y = te.compute((n, c, 1, 1), lambda b, ch, i, j: acc[b, ch] / float(h * w), name="y")

    def schedule(sch: Schedule) -> None:
        yb = sch.get_sblock("y")
        loops = sch.get_loops(yb)
        outer = sch.fuse(*loops)
        sch.parallel(outer)
        sch.compute_at(sch.get_sblock("acc"), outer)

    return Call(Kernel(f"gap_{_shape_key(shape)}", [x], [], y, schedule, label=f"gap {_shape_key(shape)}"))
