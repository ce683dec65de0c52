"""The vector unit's modern-network ops in the engine's integer arithmetic: activations, the
broadcast multiply, resampling (zero padding, nearest and bilinear resize) and layer norm.

Everything here is defined on int64 numpy arrays and is what ``cepd_engine.h`` computes (the
reference interpreter :mod:`.fxp` calls these functions; the compiler :mod:`.program` places the
same tables in the blob). Values are ints at a power-of-two frac (see :mod:`.fixed`); ``ulp`` below
is the output format's 2**-f_out. Every bound is on |fixed - exact| for an exactly represented
input, over every input of its format, except where the exact result saturates the output format;
the tests check each one over every input of a 16-bit format (``tests/test_pynq_vector.py``).

Activations (``Op.ACT``, one element per lane and cycle; one multiplier per lane)
    * ``sigmoid``, ``tanh``, ``silu``, ``gelu``: a per-node table of 2**ACT_K linear segments (value
      and step of each, computed by the compiler for the input and output formats), indexed by the
      input's top bits and interpolated with its low bits; outside the table the function's
      asymptote (0, +-1, or the identity for silu and gelu on the right). The table spans
      [-R, R) (R = 16 for sigmoid and silu, 8 for tanh and gelu) or the whole input range if that
      is smaller, so segments are at most 2R / 2**ACT_K wide. Bound: 1 ulp (table rounding and the
      final rounding) + the approximation error :data:`ACT_ERROR` (segment curvature
      max|f''| h**2 / 8 plus the tail beyond R): sigmoid 1.2e-5, tanh 2.4e-5, silu 6.3e-5,
      gelu 2.5e-5. The output format of sigmoid and tanh is fixed at frac ``bits - 2``.
    * ``hardsigmoid``: exact arithmetic: clamp(x + 3, 0, 6) / 6 by an integer division, correctly
      rounded at frac HS_FRAC = 15, then rounded to the output (fixed at frac ``bits - 2``).
      Bound: ulp/2 + 2**-16.
    * ``hardswish``: x times that hardsigmoid (one 16 x 16-bit product). Bound: ulp/2 + 3 * 2**-16.
    * ``leaky_relu``, ``prelu``: x, or x times the slope (quantised to ``bits`` at its own frac).
      Bound: ulp/2 + |x| |slope error| <= ulp/2 + |x| max|slope| 2**-(bits-1).
Broadcast multiply (``Op.MUL``): the exact product, rounded once. Bound: ulp/2.
Resampling (``Op.PAD``, ``Op.RESIZE``): per output row a source row pair and a weight, per output
    column the same (tables in the blob); a vertical pass a + wy (b - a) (weights at frac RS_WB =
    14, kept to RS_GUARD = 4 extra bits) into the line buffer, then a horizontal pass. Padding and
    nearest are exact (weights 0, index -1 reads zero; the engine streams them in one pass).
    Bilinear bound: (1/2 + 1/32) ulp + 2**-15 (|dy| + |dx|) <= (1/2 + 1/32) ulp + 2**-13 max|x|,
    with dy, dx the differences of the neighbours it interpolates (weights rounded to 2**-15).
Layer norm (``Op.LAYERNORM``): per position, exact integer sums S1 = sum x, S2 = sum x**2 over the
    C channels, W = (C S2 - S1**2) 4**g + round(C**2 eps 4**(f_in + g)) (4**g C**2 (var + eps) in
    the input's units; g headroom bits, see :func:`ln_params`), its reciprocal square root by a
    48-entry table and two Newton steps, rounded to 17 bits (relative error <= 1.55e-5: 2**-16
    from the rounding, 1.9e-7 from the Newton steps), z = (C x - S1) 2**g rsqrt(W) at frac
    LN_ZFRAC = 16; then the usual epilogue: z * scale + shift, rounded. Bound on z:
    |z| 2**-15 + 2**-17 (with eps's rounding, <= 0.25 / (4**g (C - 1)) relative, and the rounding
    of z); on the output: ulp/2 + |scale| (|z| 2**-15 + 2**-17) + |z| max|scale| 2**-(bits-1)
    (the scale's rounding) + 2**-F (the shift's rounding, F >= 24: negligible).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.targets.pynq_z1.intops import requant, rshift_round, saturate
from cepd_deploy.targets.pynq_z1.isa import ACT_SEGS

ACT_K = ACT_SEGS.bit_length() - 1  # activation tables: 2**ACT_K segments
HS_FRAC = 15  # hard-sigmoid's internal frac
RS_WB = 14  # resample weights: frac
RS_GUARD = 4  # extra frac bits of the vertical pass
LN_ZFRAC = 16  # layer norm: frac of the normalised value
LN_EPS_MAX = 1 << 61  # C**2 eps 4**f_in must stay below this (64-bit statistics)
LN_MAX_CHANNELS = 1 << 15
RSQRT_BITS = 30  # the reciprocal square root's working frac
#: 48 seeds of 1/sqrt(m) for m in [1, 4) in steps of 1/16 (at each step's centre), frac 30
RSQRT_TABLE = tuple(round(2**RSQRT_BITS / math.sqrt((k + 16.5) / 16)) for k in range(48))

#: Half-width R of each table activation's span and its asymptotes (left, right): a constant,
#: or None for the identity.
ACT_SPAN = {"sigmoid": 16, "tanh": 8, "silu": 16, "gelu": 8}
ACT_TAILS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "silu": (0.0, None), "gelu": (0.0, None)}
#: The approximation error of each table activation (besides 1 ulp of rounding): max|f''| h**2/8
#: with h = 2R / 2**ACT_K, plus the largest gap between f and its asymptote beyond R.
ACT_ERROR = {"sigmoid": 1.2e-5, "tanh": 2.4e-5, "silu": 6.3e-5, "gelu": 2.5e-5}


def _erf(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v) for v in x.reshape(-1)]).reshape(x.shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


#: The float64 definitions the tables sample (torch's, in plan/reference.py).
ACT_FNS = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "silu": lambda x: x * _sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
}


# -- activations ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActTable:
    """The table of one activation for one input/output format: segment ``i`` covers raw inputs
    [lo + i 2**shift, lo + (i+1) 2**shift); ``pairs`` holds (value, step) at frac f_out for each.
    Below ``lo`` (above the last segment) the output is ``left`` (``right``), or with None the
    input requantised from f_in to f_out."""

    lo: int
    shift: int
    pairs: np.ndarray  # (ACT_SEGS, 2) int64: T[i], T[i+1] - T[i]
    left: int | None
    right: int | None
    id_shift: int  # f_in - f_out


@cache
def act_table(kind: str, f_in: int, f_out: int, bits: int) -> ActTable:
    """The segment table of a smooth activation (computed in float64, rounded half up)."""
    span = min(16, max(ACT_K, math.ceil(math.log2(2 * ACT_SPAN[kind])) + f_in))  # raw span 2**span
    shift = span - ACT_K
    lo = -(1 << (span - 1))
    knots = (lo + (np.arange(ACT_SEGS + 1, dtype=np.int64) << shift)).astype(np.float64) * 2.0**-f_in
    t = saturate(np.floor(ACT_FNS[kind](knots) * 2.0**f_out + 0.5), bits).astype(np.int64)
    pairs = np.stack([t[:-1], np.clip(np.diff(t), -32768, 32767)], axis=1)
    ends = [
        None if v is None else int(saturate(math.floor(v * 2.0**f_out + 0.5), bits)) for v in ACT_TAILS[kind]
    ]
    return ActTable(lo, shift, pairs, ends[0], ends[1], f_in - f_out)


def act_table_eval(t: ActTable, q: np.ndarray, bits: int) -> np.ndarray:
    """A table activation of ints ``q`` (at the table's f_in) -> ints at its f_out."""
    q = np.asarray(q, dtype=np.int64)
    d = q - t.lo
    i = d >> t.shift
    inside = (d >= 0) & (i < ACT_SEGS)
    ic = np.clip(i, 0, ACT_SEGS - 1)
    r = d - (i << t.shift)
    y = rshift_round((t.pairs[ic, 0] << t.shift) + t.pairs[ic, 1] * r, t.shift)
    ident = requant(q, t.id_shift, bits)
    left = ident if t.left is None else np.full_like(q, t.left)
    right = ident if t.right is None else np.full_like(q, t.right)
    return np.where(inside, y, np.where(d < 0, left, right))


def hard_sigmoid(q: np.ndarray, f_in: int) -> np.ndarray:
    """clamp(x + 3, 0, 6) / 6 correctly rounded (half up) at frac HS_FRAC, for ints at ``f_in``:
    exact integers throughout (|values| < 2**51), one division by 6."""
    f = max(f_in, 0)
    u = np.asarray(q, dtype=np.int64) << (f - f_in)
    t = np.clip(u + (3 << f), 0, 6 << f)
    return (((t << HS_FRAC) + (3 << f)) >> f) // 6


def leaky(q: np.ndarray, slope: np.ndarray, f_slope: int) -> np.ndarray:
    """x >= 0: x, else x * slope; at frac f_in + f_slope (slope: ints at ``f_slope``)."""
    q = np.asarray(q, dtype=np.int64)
    pos = q << f_slope if f_slope >= 0 else rshift_round(q, -f_slope)
    return np.where(q >= 0, pos, q * slope)


# -- resampling ----------------------------------------------------------------------------------
def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """torch's nearest source index (its own float arithmetic, so the indices match exactly)."""
    import torch
    import torch.nn.functional as F

    ramp = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1)
    src = F.interpolate(ramp, size=(n_out, 1), mode="nearest").reshape(-1)
    return src.numpy().astype(np.int64)


def _linear_axis(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """(i0, i1, w) per output index of a bilinear axis (torch semantics, exact rationals, weight
    rounded half up to frac RS_WB); i1 = -1 where the weight is 0."""
    rows = []
    for d in range(n_out):
        if align_corners:
            src = Fraction(d * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        else:
            src = max(Fraction(0), Fraction(n_in, n_out) * (d + Fraction(1, 2)) - Fraction(1, 2))
        i0 = min(math.floor(src), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w = math.floor((src - i0) * 2**RS_WB + Fraction(1, 2))
        if w >= 1 << RS_WB:
            i0, w = i1, 0
        if i1 == i0:  # the border: both taps on one pixel
            w = 0
        rows.append((i0, i1 if w else -1, w))
    return np.array(rows, dtype=np.int64).reshape(n_out, 3)


def _pad_axis(n_in: int, n_out: int, before: int) -> np.ndarray:
    src = np.arange(n_out) - before
    src = np.where((src >= 0) & (src < n_in), src, -1)
    return np.stack([src, np.full(n_out, -1), np.zeros(n_out, dtype=np.int64)], axis=1).astype(np.int64)


def resample_tables(node) -> tuple[np.ndarray, np.ndarray]:
    """(rows (H', 3), cols (W', 3)) of a PAD or RESIZE node: source index i0, second index i1
    (-1: none), weight of i1 at frac RS_WB; index -1 reads zero."""
    from cepd_deploy.plan.ir import Op, PadAttrs, ResizeAttrs

    _, _, h, w = node.in_shapes[0]
    _, _, ho, wo = node.out_shape
    a = node.attrs
    if node.op is Op.PAD:
        assert isinstance(a, PadAttrs)
        top, _, left, _ = a.pads
        return _pad_axis(h, ho, top), _pad_axis(w, wo, left)
    assert isinstance(a, ResizeAttrs)
    if a.mode == "nearest":
        one = lambda n_in, n_out: np.stack(  # noqa: E731
            [_nearest_index(n_in, n_out), np.full(n_out, -1), np.zeros(n_out, dtype=np.int64)], axis=1
        )
        return one(h, ho), one(w, wo)
    return _linear_axis(h, ho, a.align_corners), _linear_axis(w, wo, a.align_corners)


def _take(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """x along ``axis`` at ``idx``, zero where idx is -1."""
    got = np.take(x, np.maximum(idx, 0), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = idx.size
    return np.where(idx.reshape(shape) >= 0, got, 0)


def resample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The resampling datapath on (N, C, H, W) ints -> (N, C, H', W') at frac f_in + RS_WB + RS_GUARD
    (the epilogue rounds it back to f_in)."""
    x = np.asarray(x, dtype=np.int64)
    a, b = _take(x, rows[:, 0], 2), _take(x, rows[:, 1], 2)
    v = rshift_round((a << RS_WB) + rows[:, 2].reshape(1, 1, -1, 1) * (b - a), RS_WB - RS_GUARD)
    p, q = _take(v, cols[:, 0], 3), _take(v, cols[:, 1], 3)
    return (p << RS_WB) + cols[:, 2].reshape(1, 1, 1, -1) * (q - p)


def resample_direct(rows: np.ndarray, cols: np.ndarray) -> bool:
    """Whether every weight is 0 (padding, nearest): the engine then streams source pixels to the
    output without the line buffer's vertical pass (the same values)."""
    return not rows[:, 2].any() and not cols[:, 2].any()


def resample_passes(rows: np.ndarray, direct: bool = False) -> tuple[int, int]:
    """(vertical passes, source rows read) per channel: a pass runs when an output row's
    (i0, i1, w) differs from the previous row's; it reads each valid source row once. A direct
    resample makes no pass and reads the source row of every output row that has one."""
    if direct:
        return 0, int((rows[:, 0] >= 0).sum())
    change = np.ones(len(rows), dtype=bool)
    change[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    reads = (rows[:, 0] >= 0).astype(int) + (rows[:, 1] >= 0).astype(int)
    return int(change.sum()), int(reads[change].sum())


# -- layer norm ------------------------------------------------------------------------------------
def ln_params(eps: float, channels: int, f_in: int, name: str) -> tuple[int, int]:
    """(g, E): layer norm's statistics are scaled by 4**g, the most that keeps them below 2**61
    (C**2 x**2 4**g < 2**61 for |x| <= 2**15), so that E = round(C**2 eps 4**(f_in + g)), eps in those
    units, is exact to a negligible fraction of W."""
    g = max(0, (61 - 30 - 2 * math.ceil(math.log2(channels))) // 2)
    while True:
        e = math.floor(Fraction(eps) * channels * channels * Fraction(4) ** (f_in + g) + Fraction(1, 2))
        if e < LN_EPS_MAX or g == 0:
            break
        g -= 1
    if e >= LN_EPS_MAX:
        raise CEPDError(
            f"{name}: layer norm eps {eps:g} is too large for its input's fixed-point format "
            f"(frac {f_in}); the input's calibrated range is too small"
        )
    return g, e


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Exact bit length of non-negative int64s."""
    v = v.copy()
    n = np.zeros_like(v)
    for b in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << b)
        n += np.where(big, b, 0)
        v = np.where(big, v >> b, v)
    return n + (v > 0)


def rsqrt(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r, e) with r 2**-16 2**-e ~ 1/sqrt(w) for int64 w >= 1 (w < 2**62): w = m 4**e with
    m in [1, 4) (30 frac bits), a table seed, two Newton steps r (3 - m r**2) / 2 at frac 30,
    rounded to r in [2**15, 2**16]. Relative error <= 1.55e-5."""
    w = np.asarray(w, dtype=np.int64)
    e = (_bit_length(w) - 1) >> 1
    sh = RSQRT_BITS - 2 * e
    m = np.where(sh >= 0, w << np.maximum(sh, 0), w >> np.maximum(-sh, 0))
    r = np.asarray(RSQRT_TABLE, dtype=np.int64)[(m >> 26) - 16]
    for _ in range(2):
        r2 = (r * r) >> RSQRT_BITS
        t = (m * r2) >> RSQRT_BITS
        r = (r * ((3 << RSQRT_BITS) - t)) >> (RSQRT_BITS + 1)
    return rshift_round(r, RSQRT_BITS - 16), e


def layernorm_z(x: np.ndarray, g: int, eps_q: int) -> np.ndarray:
    """Normalised values z at frac LN_ZFRAC of (N, C, ...) ints over dim 1 (``g``, ``eps_q``: see
    :func:`ln_params`): W = (C S2 - S1**2) 4**g + E, z = (C x - S1) 2**g / sqrt(W)."""
    x = np.asarray(x, dtype=np.int64)
    c = x.shape[1]
    s1 = x.sum(axis=1, keepdims=True)
    s2 = (x * x).sum(axis=1, keepdims=True)
    w = np.maximum(((c * s2 - s1 * s1) << (2 * g)) + eps_q, 1)
    r, e = rsqrt(w)
    v = (c * x - s1) * r
    s = e - g  # >= 0 unless every channel is equal (then C x - S1 = 0)
    rounded = (v + (np.int64(1) << np.maximum(s - 1, 0))) >> np.maximum(s, 0)
    return np.where(s > 0, rounded, v << np.maximum(-s, 0))
