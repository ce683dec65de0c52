"""Plan-level scheduling facts the handlers share: zero fractions, and what runs fused.

Three fusions are modelled, all ones an RS accelerator's compiler gets for free:

* *scatter into psums*: the dense result ``a`` of a CEPD layer's last TT step meets the sparse
  branch ``b`` in the GLB (``b`` is read in as the step's initial psums), so ``SCATTER_ADD`` costs
  the DRAM traffic of ``b`` and of its output, never a pass over ``a``;
* *siblings*: weighted ops reading the same value with the same window geometry (a 1x1 CEPD
  block's first TT step and its sparse branch, two 1x1 convs of a ResNet block) run as one conv
  with their filters stacked, so the input is fetched once; each op is charged its MAC share;
* *output path*: an activation (``ACT``), or a multiply by a per-channel vector (``MUL``
  broadcast, whose vector is ready before the producer runs), applied as the producer's results
  leave the PE array, like the chip's ReLU: the producer writes the final value, and the fused op
  costs its ALU operations (and the vector's load).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import WEIGHTED, Op, Plan
from cepd_deploy.targets.eyeriss.problem import ConvProblem, conv_problem

#: zero fraction assumed for every ReLU output unless the caller says otherwise
DEFAULT_ZEROS = 0.5
#: what the mapping search may minimise
OBJECTIVES = ("latency", "energy")
#: ops whose output keeps the zero fraction of their (first) input
_KEEPS_ZEROS = frozenset({Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.FLATTEN, Op.PERMUTE, Op.SLICE})
#: activations with f(0) = 0: they keep their input's zeros and, unlike ReLU, make none of their
#: own (hardswish is 0 only below -3, a tail the model ignores); sigmoid and hardsigmoid map 0 to 0.5
ZERO_KEEPING_ACTS = frozenset({"silu", "hardswish", "gelu", "tanh", "leaky_relu", "prelu"})
#: ops that write no data of their own (address arithmetic): nothing fuses into them
VIEWS = frozenset({Op.CONCAT, Op.FLATTEN})


def zero_fractions(plan: Plan, zeros: float | Mapping[str, float] = DEFAULT_ZEROS) -> dict[str, float]:
    """The zero fraction of every value: ``zeros`` (a float) for ReLU outputs, what follows from
    the inputs for ops that move or combine values (pooling, SLICE, PAD, MUL, nearest RESIZE and
    activations with f(0) = 0), 0 for the rest, or per value/node name from a mapping
    (``"default"`` sets the ReLU default there)."""
    if isinstance(zeros, Mapping):
        overrides = dict(zeros)
        default = overrides.pop("default", DEFAULT_ZEROS)
    else:
        overrides, default = {}, zeros
    by_node = {n.name: n.output for n in plan.nodes}
    known = set(by_node.values()) | {plan.input}
    fixed = {}
    for key, value in overrides.items():
        name = by_node.get(key, key)
        if name not in known:
            raise CEPDError(f"zeros: {key!r} is neither a node nor a value of the plan")
        fixed[name] = _fraction(value, key)
    default = _fraction(default, "default")
    out = {plan.input: fixed.get(plan.input, 0.0)}
    for node in plan.nodes:
        if node.output in fixed:
            z = fixed[node.output]
        elif node.op is Op.RELU or node.epilogue.act:
            z = default
        elif node.op in _KEEPS_ZEROS:
            z = out.get(node.inputs[0], 0.0)
        elif node.op is Op.ACT:
            z = out.get(node.inputs[0], 0.0) if node.attrs.kind in ZERO_KEEPING_ACTS else 0.0
        elif node.op is Op.MUL:  # zero where either factor is (independently)
            z = 1 - (1 - out.get(node.inputs[0], 0.0)) * (1 - out.get(node.inputs[1], 0.0))
        elif node.op is Op.PAD:  # the input's zeros plus the border
            size_in, size_out = math.prod(node.in_shapes[0]), math.prod(node.out_shape)
            z = (out.get(node.inputs[0], 0.0) * size_in + size_out - size_in) / size_out
        elif node.op is Op.RESIZE:  # nearest copies values; a bilinear blend is assumed dense
            z = out.get(node.inputs[0], 0.0) if node.attrs.mode == "nearest" else 0.0
        elif node.op is Op.CONCAT:
            sizes = [math.prod(s) for s in node.in_shapes]
            z = sum(out.get(x, 0.0) * s for x, s in zip(node.inputs, sizes)) / sum(sizes)
        else:
            z = 0.0
        out[node.output] = z
    return out


def _fraction(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise CEPDError(f"zeros: {key!r} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def fused_values(plan: Plan) -> frozenset[str]:
    """Dense TT results that meet their sparse branch in the GLB (see the module docstring): the
    chain output of every CEPD block with an S branch, when a weighted step writes it with no
    epilogue and only the scatter reads it."""
    count, producer = plan.readers(), plan.producer()
    fused = set()
    for block in plan.blocks():
        if block.scatter is None:
            continue
        a = block.chain_output
        prod = producer[a]
        if prod.op in WEIGHTED and prod.epilogue.empty and count[a] == 1:
            fused.add(a)
    return frozenset(fused)


def siblings(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Node name -> the names of the weighted nodes it runs with (itself included), for groups of
    two or more that read the same value with the same geometry and carry no residual.

    In a CEPD block these are the S branch (``block.sparse``) and the chain's first step, which
    both read ``block.branch_input``; the rule is the dataflow's, not the block's, so a 1x1 layer
    that reads the same value (a ResNet block's projection shortcut, dense or CEPD) joins them."""
    groups: dict[tuple[str, ConvProblem], list[str]] = {}
    for node in plan.nodes:
        if node.op in WEIGHTED and not node.epilogue.residual:
            key = (node.data_inputs[0], replace(conv_problem(node), m=1))
            groups.setdefault(key, []).append(node.name)
    return {name: tuple(names) for names in groups.values() if len(names) > 1 for name in names}


def output_fusions(plan: Plan, on_chip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Fused node name -> the node whose output path applies it (see the module docstring).

    An ``ACT``, or a ``MUL`` by an (N, C, 1, 1) vector computed before the producer runs, fuses
    when its operand is read by it alone, is not the Plan's output, and is written by an op that
    sends data out of the PE array (not a view, not a value kept in the GLB for another fusion).
    Chains fuse too (an activation after a fused one), all into the first op."""
    count, producer = plan.readers(), plan.producer()
    order = {n.name: i for i, n in enumerate(plan.nodes)}
    root: dict[str, str] = {}
    for node in plan.nodes:
        if node.op is Op.MUL and node.in_shapes[1] != node.in_shapes[0]:
            vector = producer.get(node.inputs[1])
            head = producer.get(node.inputs[0])
            first = root.get(head.name, head.name) if head is not None else None
            if first is None or (vector is not None and order[vector.name] > order[first]):
                continue
        elif node.op is not Op.ACT:
            continue
        x = node.inputs[0]
        prod = producer.get(x)
        if prod is None or prod.op in VIEWS or count[x] != 1 or x in on_chip or x == plan.output:
            continue
        root[node.name] = root.get(prod.name, prod.name)
    return root
