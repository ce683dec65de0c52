"""The fixed-point reference interpreter: the Plan's ops in the engine's integer arithmetic.

It is the definition the C-simulation must match bit for bit. Products are exact: int16 x int16
sums of at most 2**16 terms stay below 2**53, so float64 convolutions give exact integers.

>>> env = run(qplan, images)          # int64 arrays, one per Plan value   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cepd_deploy.plan.ir import (
    ConvAttrs,
    MatmulAttrs,
    Node,
    Op,
    PermuteAttrs,
    PoolAttrs,
    ScatterAttrs,
    SliceAttrs,
)
from cepd_deploy.targets.pynq_z1 import vector
from cepd_deploy.targets.pynq_z1.fixed import QPlan, pool_multiplier, quantize_array
from cepd_deploy.targets.pynq_z1.intops import align, requant, rshift_round
from cepd_deploy.targets.pynq_z1.isa import Act, ActFn

Env = dict[str, np.ndarray]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _i(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.int64)


def six(frac: int) -> int:
    """6.0 at ``frac`` (the relu6 bound)."""
    return 6 << frac if frac >= 0 else int(rshift_round(6, -frac))


def finish(q: QPlan, node: Node, v: np.ndarray, env: Env) -> np.ndarray:
    """Apply a node's integer epilogue to its wide value ``v`` (see fixed.py)."""
    e = q.nodes[node.name].epi
    shape = (1, -1, 1, 1) if v.ndim == 4 else (1, -1)
    if e.scale:
        v = v * q.qconsts[e.scale].reshape(shape)
    v = rshift_round(v, e.norm)
    if e.bias:
        v = v + (q.qconsts[e.bias].reshape(shape) << e.bias_shift)
    if e.residual:
        v = v + align(env[e.residual], e.res_shift)
    if e.act is Act.RELU:
        v = np.maximum(v, 0)
    elif e.act is Act.RELU6:
        v = np.clip(v, 0, six(e.frac))
    return requant(v, e.out_shift, q.bits)


def _conv(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    a = node.attrs
    assert isinstance(a, ConvAttrs)
    n, _, h, w = xs[0].shape
    x = _t(xs[0]).reshape(n * a.outer, a.cin, h, w)
    y = F.conv2d(x, _t(q.qconsts[node.weights[0]]), None, a.stride, a.padding, a.dilation, a.groups)
    return finish(q, node, _i(y).reshape(n, *node.out_shape[1:]), env)


def _matmul(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    a = node.attrs
    assert isinstance(a, MatmulAttrs)
    x = _t(xs[0]).reshape(xs[0].shape[0] * a.outer, a.cin, -1)
    y = torch.matmul(_t(q.qconsts[node.weights[0]]), x)
    return finish(q, node, _i(y).reshape(xs[0].shape[0], *node.out_shape[1:]), env)


def _linear(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    y = _t(xs[0]) @ _t(q.qconsts[node.weights[0]]).T
    return finish(q, node, _i(y), env)


def _sum2(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    sa, sb = q.nodes[node.name].in_shifts
    v = align(xs[0], sa)
    if node.op is Op.SCATTER_ADD:
        v = v.copy()
        assert isinstance(node.attrs, ScatterAttrs)
        v[:, list(node.attrs.index)] += align(xs[1], sb)
    else:
        v = v + align(xs[1], sb)
    return finish(q, node, v, env)


def _permute(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    x = xs[0]
    n, _, h, w = x.shape
    assert isinstance(node.attrs, PermuteAttrs)
    axes, perm = node.attrs.axes, node.attrs.perm
    k = len(axes)
    y = x.reshape(n, *axes, h, w).transpose(0, *(p + 1 for p in perm), k + 1, k + 2)
    return finish(q, node, y.reshape(n, *node.out_shape[1:]), env)


def _maxpool(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    a = node.attrs
    assert isinstance(a, PoolAttrs)
    y = F.max_pool2d(_t(xs[0]), a.kernel, a.stride, a.padding, ceil_mode=a.ceil_mode)
    return finish(q, node, _i(y), env)


def avgpool_counts(in_hw, out_hw, kernel, stride, padding) -> np.ndarray:
    """Divisor of every output pixel (count_include_pad; windows clipped to the padded input)."""
    counts = []
    for d in (0, 1):
        start = np.arange(out_hw[d]) * stride[d] - padding[d]
        end = np.minimum(start + kernel[d], in_hw[d] + padding[d])
        counts.append(end - start)
    return np.outer(counts[0], counts[1]).astype(np.int64)


def _avgpool(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    a = node.attrs
    assert isinstance(a, PoolAttrs)
    s = F.avg_pool2d(
        _t(xs[0]),
        a.kernel,
        a.stride,
        a.padding,
        ceil_mode=a.ceil_mode,
        count_include_pad=True,
        divisor_override=1,
    )
    counts = avgpool_counts(xs[0].shape[2:], node.out_shape[2:], a.kernel, a.stride, a.padding)
    v = rshift_round(_i(s) * pool_multiplier(counts), 24)
    return finish(q, node, v, env)


def _gap(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    x = xs[0]
    hw = x.shape[2] * x.shape[3]
    v = rshift_round(x.sum(axis=(2, 3), keepdims=True) * pool_multiplier(hw), 24)
    return finish(q, node, v, env)


def _concat(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    shifts = q.nodes[node.name].in_shifts
    return np.concatenate([requant(x, s, q.bits) for x, s in zip(xs, shifts)], axis=1)


def _identity(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    return finish(q, node, xs[0], env)


def _slice(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    a = node.attrs
    assert isinstance(a, SliceAttrs)
    return finish(q, node, xs[0][:, a.start : a.stop], env)


def _act(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    nq = q.nodes[node.name]
    a = nq.act
    assert a is not None
    x = xs[0]
    f_in = q.frac[node.inputs[0]]
    if a.fn is ActFn.TABLE:
        v = vector.act_table_eval(vector.act_table(a.kind, f_in, nq.f_out, q.bits), x, q.bits)
    elif a.fn is ActFn.HSIG:
        v = vector.hard_sigmoid(x, f_in)
    elif a.fn is ActFn.HSWISH:
        v = x * vector.hard_sigmoid(x, f_in)
    else:
        slopes = q.qconsts[a.slopes]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        v = vector.leaky(x, (slopes if slopes.size > 1 else slopes[:1]).reshape(shape), a.f_slope)
    return finish(q, node, v, env)


def _resample(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    rows, cols = vector.resample_tables(node)
    return finish(q, node, vector.resample(xs[0], rows, cols), env)


def _layernorm(q: QPlan, node: Node, xs: list[np.ndarray], env: Env) -> np.ndarray:
    nq = q.nodes[node.name]
    return finish(q, node, vector.layernorm_z(xs[0], nq.ln_g, nq.eps_q), env)


HANDLERS: dict[Op, Callable[[QPlan, Node, list[np.ndarray], Env], np.ndarray]] = {
    Op.CONV: _conv,
    Op.MATMUL: _matmul,
    Op.LINEAR: _linear,
    Op.AFFINE: _identity,  # scale and shift are the epilogue's
    Op.PERMUTE: _permute,
    Op.SCATTER_ADD: _sum2,
    Op.CONCAT: _concat,
    Op.FLATTEN: lambda q, node, xs, env: finish(q, node, xs[0].reshape(xs[0].shape[0], -1), env),
    Op.ADD: _sum2,
    Op.RELU: _identity,  # the act is the epilogue's
    Op.MAXPOOL: _maxpool,
    Op.AVGPOOL: _avgpool,
    Op.GLOBAL_AVGPOOL: _gap,
    Op.ACT: _act,
    Op.MUL: lambda q, node, xs, env: finish(q, node, xs[0] * xs[1], env),
    Op.SLICE: _slice,  # a view in the engine (no record): the same values
    Op.PAD: _resample,
    Op.RESIZE: _resample,
    Op.LAYERNORM: _layernorm,
}


def quantize_input(q: QPlan, x) -> np.ndarray:
    """A float batch -> ints at the Plan's input frac (round half up, saturate)."""
    return quantize_array(x, q.input_frac, q.bits)


@torch.no_grad()
def run(q: QPlan, x, *, quantized: bool = False, keep: bool = False):
    """Run a quantised Plan on a batch (float images, or ints at the input frac with
    ``quantized``); returns the int output (or every value when ``keep``)."""
    x = np.asarray(x)
    xq = x.astype(np.int64) if quantized else quantize_input(q, x)
    env: Env = {q.plan.input: xq}
    for node in q.plan.nodes:
        env[node.output] = HANDLERS[node.op](q, node, [env[i] for i in node.data_inputs], env)
    return env if keep else env[q.plan.output]
