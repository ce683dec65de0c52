"""Channel contractions as register-blocked GEMMs: Y[b, o, p] = sum_k W[o, k] X[b, k, p].

Serves MATMUL steps, 1x1 stride-1 convs and LINEAR (as P = 1). Two register tilings, picked
per shape by :func:`choose_tiling`:

* ``p`` (vector over pixels): an ``rows`` x ``lanes`` accumulator tile, W packed
  [O/rows][K][rows] so each k broadcasts ``rows`` weights and loads ``lanes`` pixels (X is
  copied into whole vectors when P % lanes != 0). The default: contiguous NCHW epilogues.
* ``o`` (vector over output channels): ``rows`` pixels x ``lanes`` channels, W packed
  [O/lanes][K][lanes]; the tile is written back transposed. Best for small images (14x14, 7x7).

Outer tiles run in parallel; the accumulators live in registers (a ``local`` buffer that
LLVM promotes); the epilogue is applied when the tile is written back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from cepd_deploy.targets.tvm.kernel import (
    Call,
    Epi,
    EpiTensors,
    EpiValues,
    Kernel,
    cdiv,
    schedule_pad,
    vectorize_inner,
)


def max_acc(nv: int, simd: int = 16) -> int:
    """Accumulator registers per tile. AVX-512 (32 registers): 24, or 16 when each k step loads
    two vectors. AVX2/SSE (16 registers): 12 either way, the rest holding the loaded vectors and
    the broadcast (6 rows x 2 vectors fit)."""
    if simd >= 16:
        return 24 if nv == 1 else 16
    return 12


@dataclass(frozen=True)
class Tiling:
    """A GEMM's register tile: what is vectorised (``p`` pixels or ``o`` output channels), rows
    broadcast per k step and vector lanes."""

    vec: str  # "p": vector over pixels/positions, "o": vector over output channels
    rows: int  # broadcast count per k: output channels ("p") or pixels ("o")
    lanes: int  # vector length of the tile (a multiple of the SIMD width)

    @property
    def key(self) -> str:
        return f"{self.vec}{self.rows}x{self.lanes}"


def tile_cycles(acc: int, loads: int, simd: int = 16) -> float:
    """Relative cost of one k step of a tile: FMA throughput, a latency floor (too few
    independent accumulators stall), load-port pressure (broadcasts + vector loads).

    With 16 registers (AVX2) each load weighs a whole step: on Zen 3 a 12 x 8 tile (12
    broadcasts and a load per 12 FMAs) ran 3x3 convs at 32-40 GMAC/s and 1x1 ones at 49-54,
    where 6 rows x 2 vectors (8 loads) ran at 51-64 and 60-63 (2 threads); 8 accumulators already
    cover the FMA latency there."""
    if simd >= 16:
        return max(acc / 2, 6.0, loads / 2)
    return max(acc / 2, 4.0, float(loads))


def choose_tiling(o: int, k: int, p: int, simd: int = 16) -> Tiling:
    """The cheapest register tiling by a small cost model (padding waste x port pressure).

    With 16 registers (AVX2) vectors run over output channels only where there are fewer pixels
    than lanes (a linear layer): on Zen 3 such tiles ran 1x1 convs at 20-47 GMAC/s where the
    vector over pixels ran at 25-63, at every map size from 56x56 to 7x7."""
    o_tiles = simd >= 16 or p < simd
    cands: list[tuple[float, Tiling]] = []
    for nv in (1, 2):
        lanes = simd * nv
        for rows in range(1, max_acc(nv, simd) // nv + 1):
            step = tile_cycles(rows * nv, rows + nv, simd)
            # pixels as vector lanes; a tail costs a padded copy of x and the wasted lanes; two
            # vectors per row measured slower than one with AVX-512 (Zen 4), whatever the model says
            tiles = cdiv(o, rows) * cdiv(p, lanes)
            copy = 0 if p % lanes == 0 else k * p / 4
            two = 1.15 if nv > 1 and simd >= 16 else 1
            cands.append((tiles * (k * step + 8) * two + copy, Tiling("p", rows, lanes)))
            if o_tiles:
                tiles = cdiv(o, lanes) * cdiv(p, rows)
                guard = 1.15 if p % rows else 1.0  # a bounds check on every broadcast
                cands.append((tiles * (k * step * guard + rows * lanes), Tiling("o", rows, lanes)))
    return min(cands, key=lambda c: c[0])[1]


def pack(w: np.ndarray, t: Tiling) -> np.ndarray:
    """W (O, K) -> [O/b][K][b] with b = rows ("p") or lanes ("o"), zero-padded."""
    o, k = w.shape
    b = t.rows if t.vec == "p" else t.lanes
    ob = cdiv(o, b)
    wp = np.zeros((ob * b, k), np.float32)
    wp[:o] = w
    return np.ascontiguousarray(wp.reshape(ob, b, k).transpose(0, 2, 1))


def gemm(
    batch: int,
    k: int,
    p: int,
    w: np.ndarray,
    epi: Epi,
    values: EpiValues,
    *,
    x_rows: int | None = None,
    tiling: Tiling | None = None,
    simd: int = 16,
    label: str = "",
) -> Call:
    """Y (batch, O, p) = W (O, k) @ X[:, :k] (X: batch x ``x_rows`` x p), then the epilogue.

    ``x_rows`` > k reads the first k rows of a taller buffer (the S branch computed alongside).
    """
    o = int(w.shape[0])
    t = tiling or choose_tiling(o, k, p, simd)
    x = te.placeholder((batch, x_rows or k, p), name="x")
    blk = t.rows if t.vec == "p" else t.lanes
    wp = te.placeholder((cdiv(o, blk), k, blk), name="w")
    r = te.reduce_axis((0, k), name="k")
    ep = EpiTensors(epi, (batch, o, p))
    zero = tirx.const(0.0, "float32")
    if t.vec == "p":  # (B, O, P) accumulators, pixels padded to whole vectors by a cheap copy
        pp = cdiv(p, t.lanes) * t.lanes
        src = (
            x
            if pp == p
            else te.compute(
                (batch, k, pp), lambda b, kk, q: te.if_then_else(q < p, x[b, kk, q], zero), name="xp"
            )
        )
        acc = te.compute(
            (batch, cdiv(o, blk) * blk, pp),
            lambda b, oo, q: te.sum(wp[oo // blk, r, oo % blk] * src[b, r, q], axis=r),
            name="acc",
        )
        y = te.compute((batch, o, p), lambda b, oo, q: ep(acc[b, oo, q], b, oo, q), name="y")
    else:  # (B, P, O) accumulators, bounds-checked broadcasts when rows do not divide P
        pp = cdiv(p, t.rows) * t.rows

        def xg(b, kk, q):
            return x[b, kk, q] if pp == p else te.if_then_else(q < p, x[b, kk, q], zero)

        acc = te.compute(
            (batch, pp, cdiv(o, blk) * blk),
            lambda b, q, oo: te.sum(wp[oo // blk, r, oo % blk] * xg(b, r, q), axis=r),
            name="acc",
        )
        y = te.compute((batch, o, p), lambda b, oo, q: ep(acc[b, q, oo], b, oo, q), name="y")
    rows = f"r{x_rows}" if x_rows and x_rows != k else ""
    padded = t.vec == "p" and p % t.lanes != 0
    kern = Kernel(
        f"gemm_b{batch}_k{k}{rows}_p{p}_o{o}_{t.key}_{epi.key}",
        [x, *ep.runtime],
        [wp, *ep.consts],
        y,
        lambda sch: _schedule(sch, t, padded, simd),
        macs=batch * o * k * p,
        label=label or f"gemm {k}->{o} x{p}",
    )
    return Call(kern, [pack(w, t), *ep.values(values)])


#: floats of X one chunk of pixel blocks reads (64 KB: L2 keeps it over the output blocks)
X_CHUNK = 16384


def pixel_chunk(k: int, lanes: int, simd: int) -> int:
    """Pixel blocks a ``p`` tile's parallel task covers for one block of output rows: as many as
    keep X's chunk within :data:`X_CHUNK` (at most 16), so each output row is written in runs of
    chunk x lanes pixels, not lanes. Measured with AVX2 only (Zen 3, 2 threads): a 56x56 GEMM with
    K = 64 went from 29-40 to 55-65 GMAC/s, one with K = 128 at 28x28 from 57-65 to 65-70; with
    K >= 1024 the chunk is one block, the order before. AVX-512 keeps one block."""
    if simd >= 16:
        return 1
    return max(1, min(16, X_CHUNK // (k * lanes)))


def _schedule(sch: Schedule, t: Tiling, padded: bool, simd: int) -> None:
    if padded:
        schedule_pad(sch, "xp")
    acc, y = sch.get_sblock("acc"), sch.get_sblock("y")
    if t.vec == "p":
        b, o, p, k = sch.get_loops(acc)
        ob, oi = sch.split(o, [None, t.rows])
        pb, pi = sch.split(p, [None, t.lanes])
        chunk = pixel_chunk(int(sch.get(k).extent), t.lanes, simd)
        if chunk > 1:
            pbo, pbi = sch.split(pb, [None, chunk])
            sch.reorder(b, pbo, ob, pbi, k, oi, pi)
            outer, at = sch.fuse(b, pbo, ob), pbi
        else:
            sch.reorder(b, pb, ob, k, oi, pi)
            outer = at = sch.fuse(b, pb, ob)
        inner_bcast, inner_vec = oi, pi
    else:
        b, p, o, k = sch.get_loops(acc)
        ob, oi = sch.split(o, [None, t.lanes])
        pb, pi = sch.split(p, [None, t.rows])
        sch.reorder(b, ob, pb, k, pi, oi)
        outer = at = sch.fuse(b, ob, pb)
        inner_bcast, inner_vec = pi, oi
    sch.parallel(outer)
    sch.reverse_compute_at(y, at)
    sch.set_scope(acc, 0, "local")
    sch.unroll(inner_bcast)
    sch.vectorize(inner_vec)
    init = sch.decompose_reduction(acc, k)
    sch.vectorize(sch.get_loops(init)[-1])
    if t.vec == "p":  # no loop left when the tile holds one output (p = 1, one channel)
        vectorize_inner(sch, y, 1)
