"""Plan -> Plan rewrites the ONNX target applies before emitting (exact algebra, fewer ops).

``merge_pointwise``: two consecutive channel contractions of one layer (1x1 steps on unfolded
views, nothing else reading the first, no epilogue between) are one matmul with W = W2 @ W1
when that is fewer MACs: in a 1x1 CEPD conv the ``o-k-i`` chain I -> r2 -> r1 -> O becomes
I -> r1 -> O (the K*K = 1 core is an r2 x r1 matrix). The middle step was a full pass over the
activations for r2*r1 MACs per pixel; onnxruntime profiles showed it as the slowest step kind.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cepd_deploy.plan.ir import Node, Op, Plan


def _pointwise(node: Node) -> bool:
    a = node.attrs
    if node.op is Op.MATMUL:
        return a["outer"] == 1 and a["inner"] == 1
    return (node.op is Op.CONV and a["outer"] == 1 and a["groups"] == 1 and a["kernel"] == (1, 1)
            and a["stride"] == (1, 1) and a["padding"] == (0, 0))  # fmt: skip


def merge_pointwise(plan: Plan) -> Plan:
    """A Plan where mergeable pairs of 1x1 steps are single matmuls (same values elsewhere)."""
    readers: dict[str, int] = {plan.output: 1}
    for n in plan.nodes:
        for x in n.inputs:
            readers[x] = readers.get(x, 0) + 1
    producer = {n.output: n for n in plan.nodes}
    consts = dict(plan.consts)
    merged: dict[str, Node] = {}  # name of the second node -> its replacement
    dropped: set[str] = set()
    for m in plan.nodes:
        n = producer.get(m.inputs[0]) if m.inputs else None
        if n is None or n.name in dropped or n.name in merged or not (_pointwise(n) and _pointwise(m)):
            continue
        if n.layer != m.layer or not n.epilogue.empty or readers.get(n.output, 0) != 1:
            continue
        cin, mid, cout = n.attrs["cin"], n.attrs["cout"], m.attrs["cout"]
        if cin * mid + mid * cout <= cin * cout:
            continue
        w1 = np.asarray(plan.consts[n.weights[0]], np.float64).reshape(mid, cin)
        w2 = np.asarray(plan.consts[m.weights[0]], np.float64).reshape(cout, mid)
        name = f"{m.name}.merged.w"
        consts[name] = (w2 @ w1).astype(np.float32)
        merged[m.name] = replace(m, op=Op.MATMUL, inputs=(n.inputs[0], *m.inputs[1:]),
                                 in_shapes=(n.in_shapes[0], *m.in_shapes[1:]), weights=(name,),
                                 attrs=dict(outer=1, cin=cin, cout=cout, inner=1))  # fmt: skip
        dropped.add(n.name)
    if not merged:
        return plan
    nodes = [merged.get(n.name, n) for n in plan.nodes if n.name not in dropped]
    return Plan(plan.input, plan.input_shape, plan.output, nodes, consts, plan.layers)


def _placement(index, out_channels: int) -> np.ndarray:
    place = np.zeros((out_channels, len(index)), np.float64)
    place[list(index), np.arange(len(index))] = 1.0
    return place


def fold_pointwise_sparse(plan: Plan, max_kappa: int) -> Plan:
    """1x1 CEPD convs as two matmuls: the sparse branch joins the chain, the scatter vanishes.

    When a layer's chain is two 1x1 steps (after :func:`merge_pointwise`) and its sparse branch
    is a 1x1 conv on the same input, ``x -> [W1; S] -> [W2 | P]`` computes the same output (P the
    0/1 placement of the kept filters): one matmul I -> (r + kappa), one (r + kappa) -> O carrying
    the scatter's epilogue. It costs O*kappa MACs per pixel for the placement, so it is done for
    ``kappa <= max_kappa`` only.
    """
    readers: dict[str, int] = {plan.output: 1}
    for n in plan.nodes:
        for x in n.inputs:
            readers[x] = readers.get(x, 0) + 1
    producer = {n.output: n for n in plan.nodes}
    consts = dict(plan.consts)
    replaced: dict[str, Node] = {}
    dropped: set[str] = set()

    def single(value: str) -> Node | None:
        n = producer.get(value)
        ok = n is not None and _pointwise(n) and n.epilogue.empty and readers.get(value, 0) == 1
        return n if ok and n.name not in dropped and n.name not in replaced else None

    for sc in plan.nodes:
        if sc.op is not Op.SCATTER_ADD or len(sc.attrs["index"]) > max_kappa:
            continue
        s, last = single(sc.inputs[1]), single(sc.inputs[0])
        first = single(last.inputs[0]) if last is not None else None
        if s is None or first is None or first.inputs[0] != s.inputs[0]:
            continue
        if len({s.layer, last.layer, first.layer, sc.layer}) != 1:
            continue
        cin, r, kappa, cout = first.attrs["cin"], first.attrs["cout"], s.attrs["cout"], sc.out_shape[1]
        w_first = np.asarray(plan.consts[first.weights[0]], np.float64).reshape(r, cin)
        w_s = np.asarray(plan.consts[s.weights[0]], np.float64).reshape(kappa, cin)
        w_last = np.asarray(plan.consts[last.weights[0]], np.float64).reshape(cout, r)
        j_w, f_w = f"{first.name}.joint.w", f"{sc.name}.joint.w"
        consts[j_w] = np.concatenate([w_first, w_s], 0).astype(np.float32)
        consts[f_w] = np.concatenate([w_last, _placement(sc.attrs["index"], cout)], 1).astype(np.float32)
        n, _, h, w = first.in_shapes[0]
        joint_shape = (n, r + kappa, h, w)
        replaced[first.name] = replace(first, op=Op.MATMUL, out_shape=joint_shape, weights=(j_w,),
                                       attrs=dict(outer=1, cin=cin, cout=r + kappa, inner=1))  # fmt: skip
        replaced[sc.name] = replace(sc, op=Op.MATMUL, inputs=(first.output, *sc.inputs[2:]),
                                    in_shapes=(joint_shape, *sc.in_shapes[2:]), weights=(f_w,),
                                    attrs=dict(outer=1, cin=r + kappa, cout=cout, inner=1))  # fmt: skip
        dropped |= {s.name, last.name}
    if not replaced:
        return plan
    nodes = [replaced.get(n.name, n) for n in plan.nodes if n.name not in dropped]
    return Plan(plan.input, plan.input_shape, plan.output, nodes, consts, plan.layers)

