"""Plan-level scheduling facts the handlers share: zero fractions, and what runs fused.

Two fusions are modelled, both ones an RS accelerator's compiler gets for free:

* *scatter into psums*: the dense result ``a`` of a CEPD layer's last TT step meets the sparse
  branch ``b`` in the GLB (``b`` is read in as the step's initial psums), so ``SCATTER_ADD`` costs
  the DRAM traffic of ``b`` and of its output, never a pass over ``a``;
* *siblings*: weighted ops reading the same value with the same window geometry (a 1x1 CEPD
  block's first TT step and its sparse branch, two 1x1 convs of a ResNet block) run as one conv
  with their filters stacked, so the input is fetched once; each op is charged its MAC share.
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
_KEEPS_ZEROS = frozenset({Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.FLATTEN, Op.PERMUTE})


def zero_fractions(plan: Plan, zeros: float | Mapping[str, float] = DEFAULT_ZEROS) -> dict[str, float]:
    """The zero fraction of every value: ``zeros`` (a float) for ReLU outputs, 0 for the rest, or
    per value/node name from a mapping (``"default"`` sets the ReLU default there)."""
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
