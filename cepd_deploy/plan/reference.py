"""The reference interpreter: the executable definition of every Plan op (torch, CPU).

>>> y = run(plan, x)            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from cepd_deploy.plan.ir import Node, Op, Plan

Tensor = torch.Tensor


def _conv(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    a = node.attrs
    x = xs[0]
    n, _, h, wd = x.shape
    x = x.reshape(n * a.outer, a.cin, h, wd)
    y = F.conv2d(x, w[node.weights[0]], None, a.stride, a.padding, a.dilation, a.groups)
    return y.reshape(node.out_shape)


def _matmul(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    a = node.attrs
    n = xs[0].shape[0]
    x = xs[0].reshape(n * a.outer, a.cin, -1)
    return torch.matmul(w[node.weights[0]], x).reshape(node.out_shape)


def _linear(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    return F.linear(xs[0], w[node.weights[0]])


def _affine(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    scale, shift = (w[k].reshape(1, -1, 1, 1) for k in node.weights)
    return xs[0] * scale + shift


def _permute(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    x = xs[0]
    n, _, h, wd = x.shape
    axes, perm = node.attrs.axes, node.attrs.perm
    k = len(axes)
    y = x.reshape(n, *axes, h, wd).permute(0, *(p + 1 for p in perm), k + 1, k + 2)
    return y.reshape(node.out_shape)


def _scatter_add(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    index = torch.tensor(node.attrs.index, dtype=torch.long)
    return xs[0].index_add(1, index, xs[1])


def _relu(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    return _act(xs[0], "relu6" if node.attrs.max == 6.0 else "relu")


def _pool(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    a = node.attrs
    pool = F.max_pool2d if node.op is Op.MAXPOOL else F.avg_pool2d
    return pool(xs[0], a.kernel, a.stride, a.padding, ceil_mode=a.ceil_mode)


#: Every activation of ``Op.ACT`` (its executable definition; ``prelu`` gets its slopes).
ACTIVATION_FNS = {
    "sigmoid": lambda x, a, w: torch.sigmoid(x),
    "hardsigmoid": lambda x, a, w: F.hardsigmoid(x),
    "silu": lambda x, a, w: F.silu(x),
    "hardswish": lambda x, a, w: F.hardswish(x),
    "gelu": lambda x, a, w: F.gelu(x),
    "tanh": lambda x, a, w: torch.tanh(x),
    "leaky_relu": lambda x, a, w: F.leaky_relu(x, a.alpha),
    "prelu": lambda x, a, w: F.prelu(x, w),
}


def _activation(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    slopes = w[node.weights[0]] if node.weights else None
    return ACTIVATION_FNS[node.attrs.kind](xs[0], node.attrs, slopes)


def _resize(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    a = node.attrs
    if a.mode == "nearest":
        return F.interpolate(xs[0], size=a.size, mode="nearest")
    return F.interpolate(xs[0], size=a.size, mode="bilinear", align_corners=a.align_corners)


def _layernorm(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    x = xs[0]
    scale, shift = (w[k] for k in node.weights)
    if x.dim() == 2:
        return F.layer_norm(x, (x.shape[1],), scale, shift, node.attrs.eps)
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), scale, shift, node.attrs.eps)
    return y.permute(0, 3, 1, 2)


def _pad(node: Node, xs: list[Tensor], w: Mapping[str, Tensor]) -> Tensor:
    top, bottom, left, right = node.attrs.pads
    return F.pad(xs[0], (left, right, top, bottom))


HANDLERS = {
    Op.CONV: _conv,
    Op.MATMUL: _matmul,
    Op.LINEAR: _linear,
    Op.AFFINE: _affine,
    Op.PERMUTE: _permute,
    Op.SCATTER_ADD: _scatter_add,
    Op.CONCAT: lambda node, xs, w: torch.cat(xs, dim=1),
    Op.FLATTEN: lambda node, xs, w: xs[0].reshape(xs[0].shape[0], -1),
    Op.ADD: lambda node, xs, w: xs[0] + xs[1],
    Op.RELU: _relu,
    Op.MAXPOOL: _pool,
    Op.AVGPOOL: _pool,
    Op.GLOBAL_AVGPOOL: lambda node, xs, w: xs[0].mean(dim=(2, 3), keepdim=True),
    Op.ACT: _activation,
    Op.MUL: lambda node, xs, w: xs[0] * xs[1],
    Op.SLICE: lambda node, xs, w: xs[0][:, node.attrs.start : node.attrs.stop],
    Op.PAD: _pad,
    Op.RESIZE: _resize,
    Op.LAYERNORM: _layernorm,
}


def _act(y: Tensor, act: str | None) -> Tensor:
    if act == "relu":
        return F.relu(y)
    if act == "relu6":
        return F.relu6(y)
    return y


def run_node(node: Node, env: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> Tensor:
    """Evaluate one node (op, then epilogue) on the values in ``env``."""
    xs = [env[x] for x in node.data_inputs]
    y = HANDLERS[node.op](node, xs, weights)
    e = node.epilogue
    shape = (1, -1, 1, 1) if y.dim() == 4 else (1, -1)
    if e.scale:
        y = y * weights[e.scale].reshape(shape)
    if e.bias:
        y = y + weights[e.bias].reshape(shape)
    if e.residual:
        y = y + env[node.inputs[-1]]
    return _act(y, e.act)


def run_nodes(
    nodes: Iterable[Node], env: dict[str, Tensor], weights: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Run nodes in order, adding each output to ``env``."""
    for node in nodes:
        env[node.output] = run_node(node, env, weights)
    return env


def torch_consts(plan: Plan, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The Plan's consts as torch tensors of ``dtype``, by name."""
    return {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in plan.consts.items()}


@torch.no_grad()
def run(plan: Plan, x: Tensor | np.ndarray, *, dtype: torch.dtype = torch.float32, keep: bool = False):
    """Run a Plan on input ``x``; returns the output (or every value when ``keep``)."""
    x = torch.as_tensor(x).to(dtype)
    env = run_nodes(plan.nodes, {plan.input: x}, torch_consts(plan, dtype))
    return env if keep else env[plan.output]
