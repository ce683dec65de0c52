"""2-D convolutions on NCHW with register-blocked x86 schedules.

* ``flat`` (stride 1, any groups): the input is padded into a flat per-channel buffer of row
  pitch Wp = W + 2*pad, so output q = h*Wp + w reads x[q + kh*dh*Wp + kw*dw] for every tap: a
  GEMM-like kernel with contiguous vector loads over q ("implicit GEMM"); the Wp - Wo junk
  columns are cropped when the epilogue writes NCHW.
* ``direct`` (any stride, groups = 1): vector over output channels, a row of output pixels as
  broadcasts, the tile written back transposed; suits strided convs and small images.
* ``plain`` (anything, e.g. strided depthwise): one output row per parallel task, vector over
  the row; also the unpacked compute the GPU schedules start from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te
from tvm.s_tir import Schedule

from cepd_deploy.plan.ir import conv_out_hw
from cepd_deploy.targets.tvm.gemm import max_acc, tile_cycles
from cepd_deploy.targets.tvm.kernel import (
    Call,
    Epi,
    EpiTensors,
    EpiValues,
    Kernel,
    cdiv,
    pad_input,
    schedule_pad,
    schedule_rows,
)


@dataclass(frozen=True)
class ConvShape:
    """A 2-D conv on NCHW: batch, channels, input size, kernel, stride, padding, dilation, groups."""

    batch: int
    cin: int
    h: int
    w: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return conv_out_hw((self.h, self.w), self.kernel, self.stride, self.padding, self.dilation)

    @property
    def cin_g(self) -> int:
        return self.cin // self.groups

    @property
    def cout_g(self) -> int:
        return self.cout // self.groups

    @property
    def macs(self) -> int:
        ho, wo = self.out_hw
        return self.batch * self.cout * self.cin_g * self.kernel[0] * self.kernel[1] * ho * wo

    @property
    def key(self) -> str:
        s = self
        return (
            f"b{s.batch}c{s.cin}h{s.h}w{s.w}o{s.cout}k{s.kernel[0]}x{s.kernel[1]}s{s.stride[0]}x{s.stride[1]}"
            f"p{s.padding[0]}x{s.padding[1]}d{s.dilation[0]}x{s.dilation[1]}g{s.groups}"
        )


@dataclass(frozen=True)
class ConvTiling:
    """A conv's schedule: ``flat``, ``direct`` or ``plain`` and its register tile (rows x lanes)."""

    kind: str  # "flat", "direct" or "plain"
    rows: int = 1  # flat: output channels per tile; direct: output pixels per tile
    lanes: int = 1  # flat: positions per tile; direct: output channels per tile

    @property
    def key(self) -> str:
        return f"{self.kind}{self.rows}x{self.lanes}"


def choose_tiling(s: ConvShape, simd: int = 16) -> ConvTiling:
    """The cheapest of the flat/direct register tilings (small cost model), else ``plain``."""
    ho, wo = s.out_hw
    taps = s.cin_g * s.kernel[0] * s.kernel[1]
    cands: list[tuple[float, ConvTiling]] = []
    # 16 registers (AVX2): at most 2 vectors a row; on Zen 3 4-vector rows (3 x 32) ran 3x3 convs
    # at 35-54 GMAC/s where 5 rows x 2 vectors ran at 52-66
    for nv in (1, 2, 4) if simd >= 16 else (1, 2):
        lanes = simd * nv
        for rows in range(1, max_acc(min(nv, 2), simd) // nv + 1):
            step = tile_cycles(rows * nv, rows + nv, simd)
            if applies(ConvTiling("flat", rows, lanes), s):
                q = ho * (s.w + 2 * s.padding[1])
                tiles = cdiv(s.cout, rows) * cdiv(q, lanes)
                crop = s.cout * ho * wo / 4  # the separate epilogue pass
                cands.append((s.batch * (tiles * (taps * step + 8) + crop), ConvTiling("flat", rows, lanes)))
            if applies(ConvTiling("direct", rows, lanes), s) and nv <= 2:
                tiles = cdiv(s.cout, lanes) * ho * cdiv(wo, rows)
                cost = s.batch * tiles * (taps * step + rows * lanes)
                cands.append((cost, ConvTiling("direct", rows, lanes)))
    if not cands:
        return ConvTiling("plain")
    return min(cands, key=lambda c: c[0])[1]


def applies(t: ConvTiling, s: ConvShape) -> bool:
    """flat: stride 1, a tile's output channels within one group; direct: no groups."""
    if t.kind == "flat":
        return s.stride == (1, 1) and (s.groups == 1 or s.cout_g % t.rows == 0)
    return t.kind == "plain" or s.groups == 1


def pack(w: np.ndarray, blk: int) -> np.ndarray:
    """W (O, Cg, kh, kw) -> [O/blk][Cg][kh][kw][blk], zero-padded."""
    o = w.shape[0]
    ob = cdiv(o, blk)
    wp = np.zeros((ob * blk, *w.shape[1:]), np.float32)
    wp[:o] = w
    return np.ascontiguousarray(wp.reshape(ob, blk, *w.shape[1:]).transpose(0, 2, 3, 4, 1))


def conv(
    s: ConvShape,
    w: np.ndarray,
    epi: Epi,
    values: EpiValues,
    *,
    tiling: ConvTiling | None = None,
    simd: int = 16,
    label: str = "",
) -> Call:
    """Y (B, O, Ho, Wo) = conv2d(X (B, C, H, W), W (O, C/groups, kh, kw)), then the epilogue."""
    t = tiling or choose_tiling(s, simd)
    if not applies(t, s):
        raise ValueError(f"tiling {t} does not apply to {s.key}")
    build = {"flat": _flat, "direct": _direct, "plain": _plain}[t.kind]
    kern, wv = build(s, t, w, epi)
    kern.key = f"conv_{s.key}_{t.key}_{epi.key}"
    kern.macs = s.macs
    kern.label = label or f"conv {s.cin}->{s.cout} {s.kernel[0]}x{s.kernel[1]}/{s.stride[0]} {s.h}x{s.w}"
    ep_vals = EpiTensors(epi, (s.batch, s.cout, *s.out_hw)).values(values)
    return Call(kern, [wv, *ep_vals])


def _flat(s: ConvShape, t: ConvTiling, w: np.ndarray, epi: Epi):
    (kh, kw), (dh, dw), (ph, pw) = s.kernel, s.dilation, s.padding
    ho, wo = s.out_hw
    pitch = s.w + 2 * pw
    q = cdiv(ho * pitch, t.lanes) * t.lanes
    # the flat reads run past the last output row; at least one spare row keeps a padded copy
    rows = max(cdiv(q + (kh - 1) * dh * pitch + (kw - 1) * dw, pitch), s.h + ph + 1)
    ob = cdiv(s.cout, t.rows)
    x = te.placeholder((s.batch, s.cin, s.h, s.w), name="x")
    wp = te.placeholder((ob, s.cin_g, kh, kw, t.rows), name="w")
    xp = pad_input(x, (s.batch, s.cin, rows, pitch), (ph, pw), name="xp")
    c, r, u = te.reduce_axis((0, s.cin_g), "c"), te.reduce_axis((0, kh), "r"), te.reduce_axis((0, kw), "u")
    per_group = max(s.cout_g // t.rows, 1)

    def tap(b, oo, qq):
        ch = (oo // t.rows) // per_group * s.cin_g + c if s.groups > 1 else c
        off = qq + r * dh * pitch + u * dw
        return xp[b, ch, off // pitch, off % pitch]

    acc = te.compute(
        (s.batch, ob * t.rows, q),
        lambda b, oo, qq: te.sum(wp[oo // t.rows, c, r, u, oo % t.rows] * tap(b, oo, qq), axis=[c, r, u]),
        name="acc",
    )
    ep = EpiTensors(epi, (s.batch, s.cout, ho, wo))
    y = te.compute(
        (s.batch, s.cout, ho, wo), lambda b, oo, i, j: ep(acc[b, oo, i * pitch + j], b, oo, i, j), name="y"
    )

    def prepare(sch: Schedule) -> None:
        sch.transform_layout(sch.get_sblock("xp"), ("write", 0), lambda b, ci, i, j: (b, ci, i * pitch + j))

    def schedule(sch: Schedule) -> None:
        schedule_pad(sch)
        blk = sch.get_sblock("acc")
        b, o, qq, *red = sch.get_loops(blk)
        obl, oi = sch.split(o, [None, t.rows])
        qb, qi = sch.split(qq, [None, t.lanes])
        sch.reorder(b, qb, obl, *red, oi, qi)
        outer = sch.fuse(b, qb, obl)
        sch.parallel(outer)
        cw = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(cw, outer)
        sch.vectorize(sch.get_loops(cw)[-1])
        sch.unroll(oi)
        sch.vectorize(qi)
        init = sch.decompose_reduction(blk, red[0])
        sch.vectorize(sch.get_loops(init)[-1])
        yl = sch.get_loops(sch.get_sblock("y"))
        sch.parallel(sch.fuse(*yl[:-1]))
        sch.vectorize(yl[-1])

    kern = Kernel("", [x, *ep.runtime], [wp, *ep.consts], y, schedule, prepare)
    return kern, pack(w, t.rows)


def _direct(s: ConvShape, t: ConvTiling, w: np.ndarray, epi: Epi):
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = s.kernel, s.stride, s.dilation, s.padding
    ho, wo = s.out_hw
    wo_pad = cdiv(wo, t.rows) * t.rows
    hp, wp_ = (ho - 1) * sh + (kh - 1) * dh + 1, (wo_pad - 1) * sw + (kw - 1) * dw + 1
    ob = cdiv(s.cout, t.lanes)
    x = te.placeholder((s.batch, s.cin, s.h, s.w), name="x")
    wp = te.placeholder((ob, s.cin, kh, kw, t.lanes), name="w")
    hp, wp_ = max(hp, s.h + ph), max(wp_, s.w + pw)
    xp = pad_input(x, (s.batch, s.cin, hp, wp_), (ph, pw), name="xp")
    src = x if xp is None else xp
    c, r, u = te.reduce_axis((0, s.cin), "c"), te.reduce_axis((0, kh), "r"), te.reduce_axis((0, kw), "u")
    acc = te.compute(
        (s.batch, ho, wo_pad, ob * t.lanes),
        lambda b, i, j, oo: te.sum(
            wp[oo // t.lanes, c, r, u, oo % t.lanes] * src[b, c, i * sh + r * dh, j * sw + u * dw],
            axis=[c, r, u],
        ),
        name="acc",
    )
    ep = EpiTensors(epi, (s.batch, s.cout, ho, wo))
    y = te.compute((s.batch, s.cout, ho, wo), lambda b, oo, i, j: ep(acc[b, i, j, oo], b, oo, i, j), name="y")

    def schedule(sch: Schedule) -> None:
        if xp is not None:
            schedule_pad(sch)
        blk = sch.get_sblock("acc")
        b, i, j, o, *red = sch.get_loops(blk)
        obl, oi = sch.split(o, [None, t.lanes])
        jb, ji = sch.split(j, [None, t.rows])
        sch.reorder(b, obl, i, jb, *red, ji, oi)
        outer = sch.fuse(b, obl, i, jb)
        sch.parallel(outer)
        sch.reverse_compute_at(sch.get_sblock("y"), outer)
        sch.set_scope(blk, 0, "local")
        sch.unroll(ji)
        sch.vectorize(oi)
        init = sch.decompose_reduction(blk, red[0])
        sch.vectorize(sch.get_loops(init)[-1])

    kern = Kernel("", [x, *ep.runtime], [wp, *ep.consts], y, schedule)
    return kern, pack(w, t.lanes)


def _plain(s: ConvShape, t: ConvTiling, w: np.ndarray, epi: Epi):
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = s.kernel, s.stride, s.dilation, s.padding
    ho, wo = s.out_hw
    x = te.placeholder((s.batch, s.cin, s.h, s.w), name="x")
    wt = te.placeholder((s.cout, s.cin_g, kh, kw), name="w")
    hp, wp_ = (
        max((ho - 1) * sh + (kh - 1) * dh + 1, s.h + ph),
        max((wo - 1) * sw + (kw - 1) * dw + 1, s.w + pw),
    )
    xp = pad_input(x, (s.batch, s.cin, hp, wp_), (ph, pw), name="xp")
    src = x if xp is None else xp
    c, r, u = te.reduce_axis((0, s.cin_g), "c"), te.reduce_axis((0, kh), "r"), te.reduce_axis((0, kw), "u")
    cout_g, cin_g = s.cout_g, s.cin_g
    acc = te.compute(
        (s.batch, s.cout, ho, wo),
        lambda b, oo, i, j: te.sum(
            wt[oo, c, r, u] * src[b, oo // cout_g * cin_g + c, i * sh + r * dh, j * sw + u * dw],
            axis=[c, r, u],
        ),
        name="acc",
    )
    ep = EpiTensors(epi, (s.batch, s.cout, ho, wo))
    y = te.compute((s.batch, s.cout, ho, wo), lambda b, oo, i, j: ep(acc[b, oo, i, j], b, oo, i, j), name="y")

    def schedule(sch: Schedule) -> None:
        schedule_rows(sch, padded=xp is not None)

    kern = Kernel("", [x, *ep.runtime], [wt, *ep.consts], y, schedule)
    return kern, np.ascontiguousarray(w, np.float32)
