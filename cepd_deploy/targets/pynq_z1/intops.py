"""The engine's integer primitives (numpy int64; identical to ``cepd_fixed.h``): rounding shifts and
saturation, shared by the fixed-point formats (:mod:`.fixed`) and the vector unit (:mod:`.vector`)."""

from __future__ import annotations

import numpy as np

from cepd_deploy.targets.pynq_z1.config import PACK_BITS

__all__ = ["align", "data_min", "requant", "rshift_round", "saturate"]


def rshift_round(v, s: int):
    """Round half up, then arithmetic right shift by s >= 0."""
    return v if s <= 0 else (v + (1 << (s - 1))) >> s


def align(v, s: int):
    """Move a value s bits of frac up (left shift) or -s down (rounding right shift)."""
    return v << s if s >= 0 else rshift_round(v, -s)


def data_min(bits: int) -> int:
    """The lowest value of ``bits``-bit data: -2**(bits-1), or -(2**(bits-1) - 1) at 8 bits or fewer,
    where the range is symmetric (the packed MAC of the 8-bit engine needs |w| <= 127)."""
    return -(1 << (bits - 1)) + (bits <= PACK_BITS)


def saturate(v, bits: int):
    """``v`` clipped to the signed ``bits``-bit range (AP_SAT; symmetric at 8 bits or fewer)."""
    return np.clip(v, data_min(bits), (1 << (bits - 1)) - 1)


def requant(v, s: int, bits: int):
    """A wide value at frac F -> ``bits``-bit at frac F - s (round half up, saturate)."""
    if s > 0:
        v = rshift_round(v, s)
    elif s < 0:
        lim = 1 << bits
        v = np.clip(v, -lim, lim) << (-s)
    return saturate(v, bits)
