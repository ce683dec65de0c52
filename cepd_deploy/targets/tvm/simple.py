"""Memory-bound kernels: elementwise ops with the epilogue (activations included), multiply,
channel permute/concat/slice, padding, pooling, resizing and layer norm.

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
    inner_loops,
    pad_input,
    schedule_flat,
    schedule_pad,
    schedule_rows,
    vectorize,
    vectorize_inner,
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


def pool(
    kind: str,
    shape: Sequence[int],
    out_shape: Sequence[int],
    kernel,
    stride,
    padding,
    *,
    contiguous: bool = True,
) -> Call:
    """Max or average pooling (average counts the padding, PyTorch's ceil-mode windows).

    ``contiguous``: reduce every input column at stride 1 (contiguous vectors for the x86
    schedule), then pick each stride-th; else only the output columns (the GPU rules cannot
    schedule a reduction whose output is read at a stride)."""
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
    pick = sw if contiguous else 1  # acc's column step per output column
    if pick != sw:
        key += "_strided"
    hp, wp = max((ho - 1) * sh + kh, h + ph), max((wo - 1) * sw + kw, w + pw)
    x = te.placeholder((n, c, h, w), name="x")
    fill = -3.0e38 if kind == "max" else 0.0
    xp = pad_input(x, (n, c, hp, wp), (ph, pw), fill=fill, name="xp")
    src = x if xp is None else xp
    r, u = te.reduce_axis((0, kh), "r"), te.reduce_axis((0, kw), "u")
    red = te.max if kind == "max" else te.sum
    # x86: every column at stride 1 (contiguous vectors), then pick each sw-th: strided vector
    # loads would be scalarised
    cols = (wo - 1) * pick + 1
    step = sw // pick  # input columns per acc column
    acc = te.compute(
        (n, c, ho, cols),
        lambda b, ch, i, j: red(src[b, ch, i * sh + r, j * step + u], axis=[r, u]),
        name="acc",
    )

    def finish(b, ch, i, j):
        if kind == "max":
            return acc[b, ch, i, j * pick]
        # PyTorch: the window, clipped to the padded input, counts (count_include_pad=True)
        hs, ws = i * sh - ph, j * sw - pw
        he, we = te.min(hs + kh, h + ph), te.min(ws + kw, w + pw)
        return acc[b, ch, i, j * pick] / ((he - hs) * (we - ws)).astype("float32")

    y = te.compute((n, c, ho, wo), finish, name="y")

    def schedule(sch: Schedule) -> None:
        schedule_rows(sch, padded=xp is not None, vectorize_out=pick == 1)

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


def mul(shape: Sequence[int], b_shape: Sequence[int]) -> Call:
    """y = a * b; ``b`` has a's shape or (N, C, 1, 1) (broadcast over the image)."""
    shape, b_shape = tuple(int(s) for s in shape), tuple(int(s) for s in b_shape)
    a, b = te.placeholder(shape, name="a"), te.placeholder(b_shape, name="b")
    bcast = b_shape != shape

    def f(*idx):
        return a[idx] * (b[(*idx[:2], 0, 0)] if bcast else b[idx])

    y = te.compute(shape, f, name="y")
    key = f"mul_{_shape_key(shape)}_{_shape_key(b_shape)}"
    return Call(Kernel(key, [a, b], [], y, lambda s: schedule_flat(s, "y"), label=key))


def channel_slice(shape: Sequence[int], start: int, stop: int) -> Call:
    """Channels [start, stop) of an (N, C, ...) input."""
    shape = tuple(int(s) for s in shape)
    x = te.placeholder(shape, name="x")
    y = te.compute((shape[0], stop - start, *shape[2:]), lambda b, c, *sp: x[(b, c + start, *sp)], name="y")
    key = f"slice_{_shape_key(shape)}_{start}to{stop}"
    return Call(Kernel(key, [x], [], y, lambda s: schedule_flat(s, "y"), label=key))


def pad(shape: Sequence[int], pads: Sequence[int]) -> Call:
    """Zero padding of an (N, C, H, W) map by (top, bottom, left, right)."""
    n, c, h, w = (int(s) for s in shape)
    top, bottom, left, right = (int(p) for p in pads)
    x = te.placeholder((n, c, h, w), name="x")
    y = pad_input(x, (n, c, h + top + bottom, w + left + right), (top, left), name="y")
    if y is None:
        raise ValueError("an all-zero padding is a copy")
    key = f"pad_{_shape_key(shape)}_{top}x{bottom}x{left}x{right}"
    return Call(Kernel(key, [x], [], y, lambda s: schedule_pad(s, "y"), label=key))


def nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """torch's nearest source index of every output position (int32): min(floor(dst * scale),
    in - 1) with scale = in / out, in float32 as torch computes it (so a product that rounds just
    below an integer floors as it does in torch); exact for out = in and out = 2 * in."""
    dst = np.arange(size_out)
    if size_out == size_in:
        return dst.astype(np.int32)
    if size_out == 2 * size_in:
        return (dst >> 1).astype(np.int32)
    scale = np.float32(size_in) / np.float32(size_out)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, size_in - 1).astype(np.int32)


def linear_taps(size_in: int, size_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """torch's linear interpolation along one axis: (index (out, 2) int32, weight (out, 2) float32).

    ``align_corners``: src = dst * (in - 1) / (out - 1) (0 when out = 1); else half-pixel centres
    src = (dst + 0.5) * in / out - 0.5 clamped at 0 (no special case for out = 1, unlike ONNX's
    ``pytorch_half_pixel``). The taps are floor(src) (at most in - 1) and the next pixel (the
    same one at the border). Computed in float32: the weights agree with torch's to about 2e-6
    (torch rounds differently), far inside the targets' tolerance.
    """
    dst = np.arange(size_out, dtype=np.float32)
    idx = np.zeros((size_out, 2), np.int32)
    lam = np.zeros((size_out, 2), np.float32)
    if size_out == size_in:  # torch copies
        idx[:, 0] = idx[:, 1] = np.arange(size_out)
        lam[:, 0] = 1.0
        return idx, lam
    one, half = np.float32(1.0), np.float32(0.5)
    if align_corners:
        ratio = np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0.0)
        src = ratio * dst
    else:
        ratio = np.float32(size_in) / np.float32(size_out)
        src = np.maximum(ratio * (dst + half) - half, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), one)
    idx[:, 0] = i0
    idx[:, 1] = i0 + (i0 < size_in - 1)
    lam[:, 0], lam[:, 1] = one - lam1, lam1
    return idx, lam


def resize(shape: Sequence[int], size: Sequence[int], mode: str, align_corners: bool = False) -> Call:
    """Resize an (N, C, H, W) map to ``size`` (torch's ``nearest`` or ``bilinear``): a gather
    through per-row and per-column index (and weight) tables computed here, as torch does.
    Bilinear blends two columns of every input row first (the gathers, H x W' of them), then two
    of those rows per output row (contiguous vectors), in torch's order of operations."""
    n, c, h, w = (int(s) for s in shape)
    ho, wo = (int(s) for s in size)
    x = te.placeholder((n, c, h, w), name="x")
    stages = ["y"]
    if mode == "nearest":
        hi, wi = te.placeholder((ho,), "int32", name="hi"), te.placeholder((wo,), "int32", name="wi")
        y = te.compute((n, c, ho, wo), lambda b, ch, i, j: x[b, ch, hi[i], wi[j]], name="y")
        consts, values = [hi, wi], [nearest_index(h, ho), nearest_index(w, wo)]
    elif mode == "bilinear":
        hi, wi = (te.placeholder((s, 2), "int32", name=f"{a}i") for a, s in (("h", ho), ("w", wo)))
        hl, wl = (te.placeholder((s, 2), name=f"{a}l") for a, s in (("h", ho), ("w", wo)))
        cols = te.compute(
            (n, c, h, wo),
            lambda b, ch, r, j: wl[j, 0] * x[b, ch, r, wi[j, 0]] + wl[j, 1] * x[b, ch, r, wi[j, 1]],
            name="cols",
        )
        y = te.compute(
            (n, c, ho, wo),
            lambda b, ch, i, j: hl[i, 0] * cols[b, ch, hi[i, 0], j] + hl[i, 1] * cols[b, ch, hi[i, 1], j],
            name="y",
        )
        (hidx, hlam), (widx, wlam) = linear_taps(h, ho, align_corners), linear_taps(w, wo, align_corners)
        consts, values = [hi, wi, hl, wl], [hidx, widx, hlam, wlam]
        stages.insert(0, "cols")
    else:
        raise ValueError(f"unknown resize mode {mode!r}")

    def schedule(sch: Schedule) -> None:
        for stage in stages:
            schedule_flat(sch, stage)

    key = f"resize_{_shape_key(shape)}_{ho}x{wo}_{mode}{'_ac' if align_corners else ''}"
    return Call(Kernel(key, [x], consts, y, schedule, label=key), values)


def layernorm(shape: Sequence[int], eps: float, scale: np.ndarray, shift: np.ndarray) -> Call:
    """Layer norm over the channels of an (N, C, H, W) or (N, C) input at every position:
    (x - mean) / sqrt(var + eps) * scale[c] + shift[c], biased variance (two passes)."""
    shape = tuple(int(s) for s in shape)
    n, c, *sp = shape
    x = te.placeholder(shape, name="x")
    values = [np.asarray(v, np.float32).reshape(c) for v in (scale, shift)]
    scale, shift = te.placeholder((c,), name="ln_scale"), te.placeholder((c,), name="ln_shift")
    pos = (n, *sp)  # one statistic per position
    r1, r2 = te.reduce_axis((0, c), "r1"), te.reduce_axis((0, c), "r2")
    inv_c = tirx.const(1.0 / c, "float32")
    total = te.compute(pos, lambda b, *p: te.sum(x[(b, r1, *p)], axis=r1), name="total")

    def sq(b, *p):
        d = x[(b, r2, *p)] - total[(b, *p)] * inv_c
        return te.sum(d * d, axis=r2)

    sqsum = te.compute(pos, sq, name="sqsum")
    eps_c = tirx.const(eps, "float32")
    rstd = te.compute(
        pos, lambda b, *p: tirx.const(1.0, "float32") / te.sqrt(sqsum[(b, *p)] * inv_c + eps_c), name="rstd"
    )

    def f(b, ch, *p):
        return (x[(b, ch, *p)] - total[(b, *p)] * inv_c) * rstd[(b, *p)] * scale[ch] + shift[ch]

    y = te.compute(shape, f, name="y")
    key = f"layernorm_{_shape_key(shape)}_eps{eps!r}"
    kern = Kernel(key, [x], [scale, shift], y, _schedule_layernorm, label=f"layernorm {_shape_key(shape)}")
    return Call(kern, values)


def _schedule_layernorm(sch: Schedule, lanes: int = 16) -> None:
    """Parallel over the batch (and image rows); each row's statistics in local scope, their
    reductions over channels outside a vectorised pixel loop. A one-pixel row (or one channel)
    leaves no pixel (or channel) loop there."""
    loops = sch.get_loops(sch.get_sblock("y"))
    if len(loops) == 4:
        b, ch, i, j = loops
        sch.reorder(b, i, ch, j)
        outer = sch.fuse(b, i)
    else:
        outer, j = loops
    sch.parallel(outer)
    for name in ("rstd", "sqsum", "total"):  # each before its producers
        blk = sch.get_sblock(name)
        sch.compute_at(blk, outer)
        sch.set_scope(blk, 0, "local")
    for name in ("total", "sqsum"):
        blk = sch.get_sblock(name)
        pixels, red = inner_loops(sch, blk, 1)
        if pixels and red:  # the channel loop outside the vector over pixels
            sch.reorder(*red, *pixels)
        for jj in pixels:
            vectorize(sch, jj, lanes)
        if red:
            vectorize_inner(sch, sch.decompose_reduction(blk, red[0]), 1, lanes)
    vectorize_inner(sch, sch.get_sblock("rstd"), 1, lanes)
    vectorize(sch, j, lanes)
