"""Named Plan -> Plan passes. Each is exact (the reference interpreter gives the same values, up
to float rounding); :func:`run` applies a list of them and verifies the Plan after each.

* ``fuse_epilogues``: ReLU and residual adds fold into the op that produces their input when
  nothing else reads it (``lower`` runs it; every target sees its result).
* ``merge_pointwise``: two consecutive 1x1 steps of one layer (unfolded views, nothing else
  reading the first, no epilogue between) become one matmul W2 @ W1 when that is fewer MACs. In
  a 1x1 CEPD conv the ``o-k-i`` chain I -> r2 -> r1 -> O becomes I -> r1 -> O: the K*K = 1 core
  is just an r2 x r1 matrix, and its step was a whole pass over the activations.

A target names the passes it wants (``Target.passes``); roles survive every pass, so
:meth:`Plan.blocks` describes the rewritten Plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import EPILOGUE_OPS, ConvAttrs, MatmulAttrs, Node, Op, Plan, ReluAttrs
from cepd_deploy.plan.verify import verify

Pass = Callable[[Plan], Plan]


def is_pointwise(node: Node) -> bool:
    """A channel contraction on an unfolded view: MATMUL, or a 1x1 stride-1 unpadded CONV."""
    a = node.attrs
    if isinstance(a, MatmulAttrs):
        return a.outer == 1 and a.inner == 1
    return (
        isinstance(a, ConvAttrs)
        and a.outer == 1
        and a.groups == 1
        and tuple(a.kernel) == (1, 1)
        and tuple(a.stride) == (1, 1)
        and tuple(a.padding) == (0, 0)
    )


def fuse_epilogues(plan: Plan) -> Plan:
    """Fold ADD (residual) and RELU into the op that produces their input when nothing else reads it."""
    nodes = list(plan.nodes)
    readers = plan.readers()
    by_output = {node.output: i for i, node in enumerate(nodes)}
    dead: set[int] = set()
    for i, node in enumerate(nodes):
        if node.op not in (Op.ADD, Op.RELU):
            continue
        for k, src in enumerate(node.inputs):
            j = by_output.get(src)
            if j is None or j in dead or readers[src] != 1:
                continue
            prod = nodes[j]
            e = prod.epilogue
            if prod.op not in EPILOGUE_OPS or e.act is not None:
                continue
            if node.op is Op.ADD:
                if e.residual:
                    continue
                other = node.inputs[1 - k]
                if by_output.get(other, -1) > j:
                    continue  # the residual must exist before the producer runs
                fused = replace(prod, inputs=prod.inputs + (other,), output=node.output,
                                epilogue=replace(e, residual=True))  # fmt: skip
            else:
                assert isinstance(node.attrs, ReluAttrs)
                act = "relu6" if node.attrs.max == 6.0 else "relu"
                fused = replace(prod, output=node.output, epilogue=replace(e, act=act))
            nodes[j] = fused
            by_output[node.output] = j
            dead.add(i)
            break
    kept = [n for i, n in enumerate(nodes) if i not in dead]
    return Plan(plan.input, plan.input_shape, plan.output, kept, plan.consts, plan.layers)


def merge_pointwise(plan: Plan) -> Plan:
    """The Plan with every profitable pair of consecutive 1x1 steps merged into one MATMUL."""
    uses, producer = plan.readers(), plan.producer()
    consts, merged, dropped = dict(plan.consts), {}, set()
    for second in plan.nodes:
        first = producer.get(second.inputs[0]) if second.inputs else None
        if first is None or first.name in dropped or first.name in merged:
            continue
        if not (is_pointwise(first) and is_pointwise(second) and first.layer == second.layer):
            continue
        if not first.epilogue.empty or uses[first.output] != 1:
            continue
        cin, mid, cout = first.attrs.cin, first.attrs.cout, second.attrs.cout
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
            attrs=MatmulAttrs(cin, cout),
        )
        dropped.add(first.name)
    if not merged:
        return plan
    nodes = [merged.get(n.name, n) for n in plan.nodes if n.name not in dropped]
    return Plan(plan.input, plan.input_shape, plan.output, nodes, consts, plan.layers)


#: Every pass by name.
PASSES: dict[str, Pass] = {
    "fuse_epilogues": fuse_epilogues,
    "merge_pointwise": merge_pointwise,
}


def run(plan: Plan, names: Sequence[str]) -> Plan:
    """``plan`` after the named passes, in order, verified after each."""
    for name in names:
        if name not in PASSES:
            raise CEPDError(f"unknown Plan pass {name!r}; passes: {', '.join(PASSES)}")
        plan = PASSES[name](plan)
        verify(plan)
    return plan
