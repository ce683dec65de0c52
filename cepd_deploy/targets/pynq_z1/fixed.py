"""Fixed-point semantics of the engine: calibration and per-node formats (primitives: :mod:`.intops`).

Every value is an int of ``bits`` bits with a power-of-two scale: real = q * 2**-frac (an
``ap_fixed<bits, bits-frac>``; the frac is a per-layer runtime field, so the engine stores raw
``ap_int<bits>`` and requantises with explicit shifts). A weighted op accumulates exact
products in 48 bits (frac = f_x + f_w); its epilogue works on a 64-bit wide value:

    v = acc                         frac F0
    v = v * scale[c]                frac F0 + f_s            (if a scale)
    v = round_shift(v, norm)        frac F <= 40             (keeps constants in range)
    v = v + (bias[c] << bias_shift) bias int32 at frac F - bias_shift
    v = v + align(residual, F)      (left shift, or round right)
    v = act(v)                      relu: max(v, 0); relu6: min(max(v, 0), 6 * 2**F)
    y = saturate(round_shift(v, F - f_out))

Rounding is half up ((v + 2**(s-1)) >> s, arithmetic shift): ap_fixed's AP_RND; saturation
to the ``bits`` range: AP_SAT. The C++ (``cepd_fixed.h``) implements the same integer ops.

The vector unit's modern-network ops (ACT, MUL, PAD, RESIZE, LAYERNORM) compute their wide value in
their own exact integer arithmetic (:mod:`.vector`, which states each one's error bound) and end
with the same epilogue (layer norm's scale and shift are its scale and bias). SLICE, PAD and RESIZE
keep their input's format; sigmoid, tanh and hard-sigmoid output at frac ``bits - 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import ActAttrs, ConvAttrs, MatmulAttrs, Node, NormAttrs, Op, Plan, ReluAttrs
from cepd_deploy.targets.pynq_z1.intops import saturate
from cepd_deploy.targets.pynq_z1.isa import Act, ActFn
from cepd_deploy.targets.pynq_z1.vector import HS_FRAC, LN_MAX_CHANNELS, LN_ZFRAC, RS_GUARD, RS_WB, ln_params

FW_MAX = 40  # the wide value's frac never exceeds this (see module docstring)
#: Activations whose output format is fixed at frac bits - 2 (their values lie in [-1, 1]).
BOUNDED = frozenset({"sigmoid", "tanh", "hardsigmoid"})
POOL_SHIFT = 24  # average pools multiply by round(2**24 / count) then round-shift by 24
RED_LIMIT = 1 << 16  # longest reduction: 2**16 products of 2**30 fit the 48-bit accumulator
#: ops whose output keeps its input's format (exact, or a rounded average of its inputs)
PASS_THROUGH = frozenset(
    {Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.RELU, Op.FLATTEN, Op.SLICE, Op.PAD, Op.RESIZE}
)


def quantize_array(x, frac: int, bits: int) -> np.ndarray:
    """Float -> int64 at ``frac`` (round half up, saturate to ``bits``)."""
    x = np.asarray(x, dtype=np.float64)
    return saturate(np.floor(x * 2.0**frac + 0.5), bits).astype(np.int64)


def dequantize(q, frac: int) -> np.ndarray:
    """Ints at ``frac`` -> float64 reals (q * 2**-frac)."""
    return np.asarray(q, dtype=np.float64) * 2.0**-frac


def pool_multiplier(count):
    """round(2**POOL_SHIFT / count) as an integer (what the engine computes)."""
    return ((1 << POOL_SHIFT) + count // 2) // count


# -- formats ---------------------------------------------------------------------------------
def _exponent(m: float) -> int:
    """e with m < 2**e (m > 0)."""
    return math.frexp(m)[1]


def value_frac(maxabs: float, bits: int) -> int:
    """The frac that holds |x| <= maxabs without saturating, in [-bits, 2*bits]."""
    if not math.isfinite(maxabs):
        raise CEPDError("calibration produced a non-finite value; check the model and samples")
    if maxabs == 0:
        return 2 * bits
    return int(np.clip(bits - 1 - _exponent(maxabs), -bits, 2 * bits))


@dataclass(frozen=True)
class Epi:
    """The integer epilogue of one node: what the engine's EPI block holds."""

    frac0: int  # frac of the raw value (accumulator or aligned sum) before the epilogue
    scale: str | None = None  # const with per-channel scales (quantised to ``bits``)
    norm: int = 0
    bias: str | None = None  # const with per-channel biases (int32)
    bias_shift: int = 0
    residual: str | None = None  # value added after the bias
    res_shift: int = 0
    act: Act = Act.NONE
    frac: int = 0  # frac after scale and norm
    out_shift: int = 0


@dataclass(frozen=True)
class ActQ:
    """How the vector unit computes one ACT node (see vector.py)."""

    fn: ActFn
    kind: str
    f_slope: int = 0  # LEAKY: frac of the slopes
    slopes: str | None = None  # LEAKY: the qconst of the slopes (prelu's weights, or leaky's alpha)


@dataclass(frozen=True)
class NodeQ:
    """Fixed-point parameters of one node."""

    f_out: int
    epi: Epi
    f_w: int | None = None  # weight frac of MAC ops
    in_shifts: tuple[int, ...] = ()  # ADD/SCATTER_ADD: align each input to frac0; CONCAT: requant
    act: ActQ | None = None  # ACT nodes
    ln_g: int = 0  # LAYERNORM: headroom of the statistics, and eps in their units (vector.ln_params)
    eps_q: int = 0


@dataclass
class QPlan:
    """A Plan with formats: value fracs, quantised consts, and per-node parameters."""

    plan: Plan
    bits: int
    frac: dict[str, int]
    qconsts: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: dict[str, NodeQ] = field(default_factory=dict)

    @property
    def input_frac(self) -> int:
        return self.frac[self.plan.input]

    @property
    def output_frac(self) -> int:
        return self.frac[self.plan.output]


# -- calibration -----------------------------------------------------------------------------
def calibrate(plan: Plan, samples) -> dict[str, float]:
    """Max |value| of every Plan value over the sample inputs (float reference)."""
    from cepd_deploy.plan.reference import run

    out: dict[str, float] = {}
    for x in torch.as_tensor(np.asarray(samples, dtype=np.float32)).split(plan.input_shape[0]):
        for k, v in run(plan, x, keep=True).items():  # the Plan's batch size, one chunk at a time
            out[k] = max(out.get(k, 0.0), float(v.abs().max()) if v.numel() else 0.0)
    return out


def quantize(
    plan: Plan, samples, bits: int = 16, maxabs: dict[str, float] | None = None, headroom_bits: int = 1
) -> QPlan:
    """Choose every format from calibration on ``samples`` and quantise the consts.

    Activations get ``headroom_bits`` above the calibrated maximum (inputs unseen during
    calibration can be larger); weights, scales and biases are known exactly and get none.

    >>> q = quantize(plan, np.random.randn(8, 3, 32, 32), bits=16)   # doctest: +SKIP
    """
    if plan.input_shape[0] != 1:
        raise CEPDError("the PYNQ-Z1 engine runs one image per call: lower the model with N=1")
    maxabs = calibrate(plan, samples) if maxabs is None else maxabs
    maxabs = {k: v * 2.0**headroom_bits for k, v in maxabs.items()}
    q = QPlan(plan, bits, {plan.input: value_frac(maxabs[plan.input], bits)})
    for node in plan.nodes:
        _quantize_node(q, node, maxabs)
    return q


def _weight(q: QPlan, name: str) -> int:
    """Quantise a weight-like const (weights, scales) to ``bits``; returns its frac."""
    w = np.asarray(q.plan.consts[name], dtype=np.float64)
    f = value_frac(float(np.abs(w).max()) if w.size else 0.0, q.bits)
    q.qconsts[name] = quantize_array(w, f, q.bits)
    return f


def _bias(q: QPlan, name: str, frac: int) -> int:
    """Quantise a bias to int32 at a frac in [frac-30, frac]; returns its left shift."""
    b = np.asarray(q.plan.consts[name], dtype=np.float64)
    m = float(np.abs(b).max()) if b.size else 0.0
    fit = 31 - _exponent(m) if m > 0 else frac
    f_b = min(frac, max(frac - 30, fit))
    q.qconsts[name] = quantize_array(b, f_b, 32)
    return frac - f_b


def _epilogue(q: QPlan, node: Node, frac0: int, f_out: int, scale=None, bias=None) -> Epi:
    e = node.epilogue
    if (scale or bias) and (e.scale or e.bias):
        raise CEPDError(f"{node.name}: an affine op with its own scale/bias epilogue is not supported")
    scale, bias = scale or e.scale, bias or e.bias
    frac = frac0 + (_weight(q, scale) if scale else 0)
    norm = max(0, frac - FW_MAX)
    frac -= norm
    bias_shift = _bias(q, bias, frac) if bias else 0
    residual = node.inputs[-1] if e.residual else None
    res_shift = frac - q.frac[residual] if residual else 0
    act = {None: Act.NONE, "relu": Act.RELU, "relu6": Act.RELU6}[e.act]
    return Epi(frac0, scale, norm, bias, bias_shift, residual, res_shift, act, frac, frac - f_out)


def _quantize_node(q: QPlan, node: Node, maxabs: dict[str, float]) -> None:
    f_in = [q.frac[x] for x in node.data_inputs]
    op = node.op
    if op in PASS_THROUGH or (op is Op.PERMUTE and node.epilogue.empty):
        f_out = f_in[0]
    elif op is Op.ACT and node.attrs.kind in BOUNDED:
        f_out = q.bits - 2  # the output lies in [-1, 1]
    else:
        f_out = value_frac(maxabs[node.output], q.bits)
    q.frac[node.output] = f_out
    f_w, shifts = None, ()
    if op in (Op.ACT, Op.MUL, Op.LAYERNORM, Op.PAD, Op.RESIZE):
        q.nodes[node.name] = _vector_node(q, node, f_in, f_out)
        return
    if op in (Op.CONV, Op.MATMUL, Op.LINEAR):
        a = node.attrs
        if isinstance(a, ConvAttrs):
            red = a.cin // a.groups * math.prod(a.kernel)
        elif isinstance(a, MatmulAttrs):
            red = a.cin
        else:  # LINEAR
            red = node.in_shapes[0][1]
        if red > RED_LIMIT:
            raise CEPDError(
                f"{node.name}: reduction of {red} products exceeds the 48-bit accumulator bound ({RED_LIMIT})"
            )
        f_w = _weight(q, node.weights[0])
        epi = _epilogue(q, node, f_in[0] + f_w, f_out)
    elif op is Op.AFFINE:
        epi = _epilogue(q, node, f_in[0], f_out, scale=node.weights[0], bias=node.weights[1])
    elif op in (Op.ADD, Op.SCATTER_ADD):
        frac0 = max(f_in)
        shifts = tuple(frac0 - f for f in f_in)
        epi = _epilogue(q, node, frac0, f_out)
    elif op is Op.CONCAT:
        shifts = tuple(f - f_out for f in f_in)
        epi = Epi(f_out, frac=f_out)
    elif op is Op.RELU:
        assert isinstance(node.attrs, ReluAttrs)
        act = Act.RELU6 if node.attrs.max == 6.0 else Act.RELU
        epi = Epi(f_in[0], act=act, frac=f_in[0], out_shift=f_in[0] - f_out)
    else:  # pools, flatten, permute, slice (only permute may carry an epilogue)
        epi = _epilogue(q, node, f_in[0], f_out)
    q.nodes[node.name] = NodeQ(f_out, epi, f_w, shifts)


#: Activations of ACT and how the vector unit computes them
ACT_FNS = {
    "sigmoid": ActFn.TABLE,
    "tanh": ActFn.TABLE,
    "silu": ActFn.TABLE,
    "gelu": ActFn.TABLE,
    "hardsigmoid": ActFn.HSIG,
    "hardswish": ActFn.HSWISH,
    "leaky_relu": ActFn.LEAKY,
    "prelu": ActFn.LEAKY,
}


def _vector_node(q: QPlan, node: Node, f_in: list[int], f_out: int) -> NodeQ:
    """Formats of the vector unit's modern-network ops: the frac of the value each computes
    before its epilogue (which rounds it to ``f_out``), and their constants (see vector.py)."""
    op = node.op
    if op is Op.MUL:
        return NodeQ(f_out, _epilogue(q, node, f_in[0] + f_in[1], f_out))
    if op in (Op.PAD, Op.RESIZE):
        return NodeQ(f_out, _epilogue(q, node, f_in[0] + RS_WB + RS_GUARD, f_out))
    if op is Op.LAYERNORM:
        assert isinstance(node.attrs, NormAttrs)
        c = node.in_shapes[0][1]
        if c > LN_MAX_CHANNELS:
            raise CEPDError(f"{node.name}: layer norm over {c} channels (the engine's statistics hold "
                            f"{LN_MAX_CHANNELS})")  # fmt: skip
        g, eps_q = ln_params(node.attrs.eps, c, f_in[0], node.name)
        epi = _epilogue(q, node, LN_ZFRAC, f_out, scale=node.weights[0], bias=node.weights[1])
        return NodeQ(f_out, epi, ln_g=g, eps_q=eps_q)
    assert isinstance(node.attrs, ActAttrs)
    kind = node.attrs.kind
    fn = ACT_FNS[kind]
    if fn is ActFn.TABLE:
        return NodeQ(f_out, _epilogue(q, node, f_out, f_out), act=ActQ(fn, kind))
    if fn is ActFn.HSIG:
        return NodeQ(f_out, _epilogue(q, node, HS_FRAC, f_out), act=ActQ(fn, kind))
    if fn is ActFn.HSWISH:
        return NodeQ(f_out, _epilogue(q, node, f_in[0] + HS_FRAC, f_out), act=ActQ(fn, kind))
    if kind == "prelu":
        slopes = node.weights[0]
        f_s = _weight(q, slopes)
    else:  # leaky_relu: its alpha as a one-entry table
        slopes = f"{node.name}#alpha"
        f_s = value_frac(abs(node.attrs.alpha), q.bits)
        q.qconsts[slopes] = quantize_array([node.attrs.alpha], f_s, q.bits)
    return NodeQ(f_out, _epilogue(q, node, f_in[0] + f_s, f_out), act=ActQ(fn, kind, f_s, slopes))
