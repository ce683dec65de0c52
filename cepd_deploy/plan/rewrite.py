"""Plan -> Plan rewrites that are exact algebra (the reference interpreter gives the same values,
up to float rounding), shared by the targets that want them.

``merge_pointwise``: two consecutive 1x1 steps of one layer (unfolded views, nothing else
reading the first, no epilogue between) become one matmul W2 @ W1 when that is fewer MACs. In
a 1x1 CEPD conv the ``o-k-i`` chain I -> r2 -> r1 -> O becomes I -> r1 -> O: the K*K = 1 core
is just an r2 x r1 matrix, and its step was a whole pass over the activations.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from cepd_deploy.plan.ir import Node, Op, Plan


def is_pointwise(node: Node) -> bool:
    """A channel contraction on an unfolded view: MATMUL, or a 1x1 stride-1 unpadded CONV."""
    a = node.attrs
    if node.op is Op.MATMUL:
        return a["outer"] == 1 and a.get("inner", 1) == 1
    return (
        node.op is Op.CONV
        and a["outer"] == 1
        and a["groups"] == 1
        and tuple(a["kernel"]) == (1, 1)
        and tuple(a["stride"]) == (1, 1)
        and tuple(a["padding"]) == (0, 0)
    )


def readers(plan: Plan) -> Counter:
    """How many node inputs (and the plan output) read each value."""
    count = Counter(x for n in plan.nodes for x in n.inputs)
    count[plan.output] += 1
    return count


def merge_pointwise(plan: Plan) -> Plan:
    """The Plan with every profitable pair of consecutive 1x1 steps merged into one MATMUL."""
    uses, producer = readers(plan), {n.output: n for n in plan.nodes}
    consts, merged, dropped = dict(plan.consts), {}, set()
    for second in plan.nodes:
        first = producer.get(second.inputs[0]) if second.inputs else None
        if first is None or first.name in dropped or first.name in merged:
            continue
        if not (is_pointwise(first) and is_pointwise(second) and first.layer == second.layer):
            continue
        if not first.epilogue.empty or uses[first.output] != 1:
            continue
        cin, mid, cout = first.attrs["cin"], first.attrs["cout"], second.attrs["cout"]
        if cin * cout >= cin * mid + mid * cout:
            continue
        w1 = np.asarray(plan.consts[first.weights[0]], np.float64).reshape(mid, cin)
        w2 = np.asarray(plan.consts[second.weights[0]], np.float64).reshape(cout, mid)
        name = f"{second.name}.merged.w"
        consts[name] = (w2 @ w1).astype(np.float32)
        merged[second.name] = replace(
            second,
            op=Op.MATMUL,
            inputs=(first.inputs[0], *second.inputs[1:]),
            in_shapes=(first.in_shapes[0], *second.in_shapes[1:]),
            weights=(name,),
            attrs=dict(outer=1, cin=cin, cout=cout, inner=1),
        )
        dropped.add(first.name)
    if not merged:
        return plan
    nodes = [merged.get(n.name, n) for n in plan.nodes if n.name not in dropped]
    return Plan(plan.input, plan.input_shape, plan.output, nodes, consts, plan.layers)
