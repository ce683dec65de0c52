"""The one counter of MACs, params and bytes in the project: derived from Plan nodes.

>>> # a 3x3 conv 16->32 on a 1x16x8x8 input, stride 1, pad 1: 32*16*9 weights x 64 positions
>>> # = 294,912 MACs
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from cepd_deploy.plan.ir import Node, Op, Plan


def node_macs(node: Node) -> int:
    """Multiply-accumulates of one op (0 for data movement, pooling and elementwise ops)."""
    if node.op is Op.CONV:
        n, c_out, h, w = node.out_shape
        kh, kw = node.attrs.kernel
        cin_per_group = node.attrs.cin // node.attrs.groups
        return n * c_out * h * w * cin_per_group * kh * kw
    if node.op is Op.MATMUL:
        n, c_out, h, w = node.out_shape
        return n * c_out * h * w * node.attrs.cin
    if node.op is Op.LINEAR:
        n, f_out = node.out_shape
        return n * f_out * node.in_shapes[0][1]
    return 0


def node_params(node: Node, plan: Plan | None = None) -> int:
    """Parameters an op reads: its weights and epilogue scale/bias."""
    names = list(node.weights)
    names += [x for x in (node.epilogue.scale, node.epilogue.bias) if x]
    if plan is not None:
        return sum(plan.consts[x].size for x in names)
    return sum(_weight_sizes(node))


def _weight_sizes(node: Node) -> list[int]:
    sizes = []
    if node.op is Op.CONV:
        kh, kw = node.attrs.kernel
        sizes.append(node.attrs.cout * node.attrs.cin // node.attrs.groups * kh * kw)
    elif node.op is Op.MATMUL:
        sizes.append(node.attrs.cout * node.attrs.cin)
    elif node.op is Op.LINEAR:
        sizes.append(node.out_shape[1] * node.in_shapes[0][1])
    if node.op in (Op.AFFINE, Op.LAYERNORM):
        sizes += [node.out_shape[1]] * 2
    elif node.op is Op.ACT and node.weights:  # prelu slopes (one per channel, or one)
        sizes.append(node.out_shape[1])
    channels = node.out_shape[1]
    sizes += [channels for x in (node.epilogue.scale, node.epilogue.bias) if x]
    return sizes


def node_bytes(node: Node, elem_bytes: int = 4) -> int:
    """Bytes an op moves if nothing stays on chip: inputs + output + parameters."""
    elems = sum(math.prod(s) for s in node.in_shapes) + math.prod(node.out_shape)
    return (elems + sum(_weight_sizes(node))) * elem_bytes


def nodes_macs(nodes: Iterable[Node]) -> int:
    """Multiply-accumulates of ``nodes`` together."""
    return sum(node_macs(n) for n in nodes)


def plan_macs(plan: Plan) -> int:
    """Multiply-accumulates of the whole Plan."""
    return nodes_macs(plan.nodes)


def plan_params(plan: Plan) -> int:
    """Parameters of the whole Plan (sizes of the consts its ops read)."""
    return sum(node_params(n, plan) for n in plan.nodes)


def plan_bytes(plan: Plan, elem_bytes: int = 4) -> int:
    """Bytes the whole Plan moves if nothing stays on chip (the sum of :func:`node_bytes`)."""
    return sum(node_bytes(n, elem_bytes) for n in plan.nodes)


def dense_macs(plan: Plan) -> int:
    """MACs the network would need with every CEPD layer replaced by its dense conv."""
    cepd = {name for name, info in plan.layers.items() if info.kind == "cepd"}
    other = sum(node_macs(n) for n in plan.nodes if n.layer not in cepd)
    return other + sum(plan.layers[name].dense_macs for name in cepd)


def dense_params(plan: Plan) -> int:
    """Params of the network with every CEPD layer replaced by its dense conv (BN folded)."""
    cepd = {name for name, info in plan.layers.items() if info.kind == "cepd"}
    other = sum(node_params(n, plan) for n in plan.nodes if n.layer not in cepd)
    return other + sum(plan.layers[name].dense_params for name in cepd)


def totals(plan: Plan) -> dict:
    """The headline figures of a Plan (what ``inspect --json`` reports as ``totals``)."""
    macs, params = plan_macs(plan), plan_params(plan)
    d_macs, d_params = dense_macs(plan), dense_params(plan)
    return {
        "macs": macs,
        "params": params,
        "dense_macs": d_macs,
        "dense_params": d_params,
        "flops_remaining": macs / d_macs if d_macs else 1.0,
        "params_remaining": params / d_params if d_params else 1.0,
        "bytes": plan_bytes(plan),
        "ops": len(plan.nodes),
    }
