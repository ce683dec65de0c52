"""Plan -> Plan rewrites the ONNX target applies before emitting (exact algebra, fewer ops).

``merge_pointwise`` (shared with the TVM target) lives in ``cepd_deploy.plan.rewrite``: onnxruntime
profiles showed the middle 1x1 step of a 1x1 CEPD conv as the slowest step kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from cepd_deploy.plan.cost import node_macs
from cepd_deploy.plan.ir import Node, Op, Plan
from cepd_deploy.plan.rewrite import is_pointwise, merge_pointwise

__all__ = ["fold_pointwise_sparse", "merge_pointwise"]


def _placement(index, out_channels: int) -> np.ndarray:
    place = np.zeros((out_channels, len(index)), np.float64)
    place[list(index), np.arange(len(index))] = 1.0
    return place


def fold_pointwise_sparse(plan: Plan, block: int = 1,
                          pays: Callable[[int, int, int, int], bool] | None = None) -> Plan:  # fmt: skip
    """1x1 CEPD convs as two matmuls: the sparse branch joins the chain, the scatter vanishes.

    When a layer's chain is two 1x1 steps (after :func:`merge_pointwise`) and its sparse branch
    is a 1x1 conv on the same input, ``x -> [W1; S] -> [W2 | P]`` computes the same output (P the
    0/1 placement of the kept filters): one matmul I -> (r + kappa), one (r + kappa) -> O carrying
    the scatter's epilogue. The placement costs O*kappa MACs per pixel, so it is done only where
    ``pays(kappa, O, pixels, layer MACs)`` (default: always). The joint channels are padded with
    zeros to a multiple of ``block`` (onnxruntime's NCHWc convs pad to it anyway, and a multiple
    keeps that layout); kappa counts the padding.
    """
    readers: dict[str, int] = {plan.output: 1}
    for n in plan.nodes:
        for x in n.inputs:
            readers[x] = readers.get(x, 0) + 1
    producer = {n.output: n for n in plan.nodes}
    layer_macs: dict[str, int] = {}
    for n in plan.nodes:
        layer_macs[n.layer] = layer_macs.get(n.layer, 0) + node_macs(n)
    consts = dict(plan.consts)
    replaced: dict[str, Node] = {}
    dropped: set[str] = set()

    def single(value: str) -> Node | None:
        n = producer.get(value)
        ok = n is not None and is_pointwise(n) and n.epilogue.empty and readers.get(value, 0) == 1
        return n if ok and n.name not in dropped and n.name not in replaced else None

    for sc in plan.nodes:
        if sc.op is not Op.SCATTER_ADD:
            continue
        s, last = single(sc.inputs[1]), single(sc.inputs[0])
        first = single(last.inputs[0]) if last is not None else None
        if s is None or first is None or first.inputs[0] != s.inputs[0]:
            continue
        if len({s.layer, last.layer, first.layer, sc.layer}) != 1:
            continue
        cin, r, kappa, cout = first.attrs["cin"], first.attrs["cout"], s.attrs["cout"], sc.out_shape[1]
        joint = -(-(r + kappa) // block) * block
        pixels = math.prod(sc.out_shape) // cout
        if pays is not None and not pays(joint - r, cout, pixels, layer_macs[sc.layer]):
            continue
        w_first = np.asarray(plan.consts[first.weights[0]], np.float64).reshape(r, cin)
        w_s = np.asarray(plan.consts[s.weights[0]], np.float64).reshape(kappa, cin)
        w_last = np.asarray(plan.consts[last.weights[0]], np.float64).reshape(cout, r)
        j_w, f_w = f"{first.name}.joint.w", f"{sc.name}.joint.w"
        pad = joint - r - kappa
        consts[j_w] = np.concatenate([w_first, w_s, np.zeros((pad, cin))], 0).astype(np.float32)
        place = _placement(sc.attrs["index"], cout)
        consts[f_w] = np.concatenate([w_last, place, np.zeros((cout, pad))], 1).astype(np.float32)
        n, _, h, w = first.in_shapes[0]
        joint_shape = (n, joint, h, w)
        replaced[first.name] = replace(first, op=Op.MATMUL, out_shape=joint_shape, weights=(j_w,),
                                       attrs=dict(outer=1, cin=cin, cout=joint, inner=1))  # fmt: skip
        replaced[sc.name] = replace(sc, op=Op.MATMUL, inputs=(first.output, *sc.inputs[2:]),
                                    in_shapes=(joint_shape, *sc.in_shapes[2:]), weights=(f_w,),
                                    attrs=dict(outer=1, cin=joint, cout=cout, inner=1))  # fmt: skip
        dropped |= {s.name, last.name}
    if not replaced:
        return plan
    nodes = [replaced.get(n.name, n) for n in plan.nodes if n.name not in dropped]
    return Plan(plan.input, plan.input_shape, plan.output, nodes, consts, plan.layers)

