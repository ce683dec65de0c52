"""Invariants of a Plan, as a table of rules checked after lowering and before every target."""

from __future__ import annotations

import math
from collections.abc import Callable

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import (
    ACTIVATIONS,
    ATTRS,
    EPILOGUE_OPS,
    WEIGHTED,
    CEPDBlock,
    Node,
    Op,
    Plan,
    Role,
    conv_out_hw,
)


def _conv_out(node: Node) -> tuple[int, ...]:
    a = node.attrs
    n, c, h, w = node.in_shapes[0]
    hw = conv_out_hw((h, w), a.kernel, a.stride, a.padding, a.dilation)
    return (n, a.outer * a.cout, *hw)


def _weight_shape(node: Node) -> tuple[int, ...] | None:
    a = node.attrs
    if node.op is Op.CONV:
        return (a.cout, a.cin // a.groups, *a.kernel)
    if node.op is Op.MATMUL:
        return (a.cout, a.cin)
    if node.op is Op.LINEAR:
        return (node.out_shape[1], node.in_shapes[0][1])
    return None


def _rule_conv(node: Node, plan: Plan) -> str | None:
    a = node.attrs
    if node.in_shapes[0][1] != a.outer * a.cin:
        return f"input channels {node.in_shapes[0][1]} != outer*cin {a.outer}*{a.cin}"
    if a.cin % a.groups or a.cout % a.groups:
        return "channels not divisible by groups"
    if _conv_out(node) != node.out_shape:
        return f"output shape {node.out_shape} != computed {_conv_out(node)}"
    return None


def _rule_matmul(node: Node, plan: Plan) -> str | None:
    a = node.attrs
    n, c, h, w = node.in_shapes[0]
    if c != a.outer * a.cin * a.inner:
        return f"input channels {c} != outer*cin*inner"
    if node.out_shape != (n, a.outer * a.cout * a.inner, h, w):
        return f"output shape {node.out_shape} inconsistent with attrs"
    return None


def _rule_permute(node: Node, plan: Plan) -> str | None:
    axes, perm = node.attrs.axes, node.attrs.perm
    if math.prod(axes) != node.in_shapes[0][1] or sorted(perm) != list(range(len(axes))):
        return "axes/perm do not describe the channel dim"
    return None


def _rule_scatter(node: Node, plan: Plan) -> str | None:
    index, c = node.attrs.index, node.out_shape[1]
    if len(set(index)) != len(index) or any(not 0 <= i < c for i in index):
        return "scatter index must be distinct channels in range"
    if len(index) != node.in_shapes[1][1]:
        return "scatter index length != channels of the sparse branch"
    return None


def _pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Pooled size as torch computes it (with ceil_mode the last window starts inside the input)."""
    out = -(-(size + 2 * p - k) // s) + 1 if ceil else (size + 2 * p - k) // s + 1
    return out - 1 if ceil and (out - 1) * s >= size + p else out


def _rule_pool(node: Node, plan: Plan) -> str | None:
    n, c, h, w = node.in_shapes[0]
    if node.op is Op.GLOBAL_AVGPOOL:
        want = (n, c, 1, 1)
    else:
        a = node.attrs
        want = (n, c, *(_pool_out(x, k, s, p, a.ceil_mode) for x, k, s, p in zip((h, w), a.kernel, a.stride,
                                                                                a.padding)))  # fmt: skip
    return None if node.out_shape == want else f"output shape {node.out_shape} != computed {want}"


def _rule_act(node: Node, plan: Plan) -> str | None:
    kind, c = node.attrs.kind, node.out_shape[1]
    if kind not in ACTIVATIONS:
        return f"unknown activation {kind!r}"
    if node.out_shape != node.in_shapes[0]:
        return "output shape differs from the input's"
    if kind == "prelu":
        if len(node.weights) != 1 or plan.consts[node.weights[0]].shape not in ((c,), (1,)):
            return "prelu needs one slope per channel (or one in all)"
    elif node.weights:
        return f"{kind} takes no weights"
    return None


def _rule_mul(node: Node, plan: Plan) -> str | None:
    a, b = node.in_shapes
    if b != a and not (len(a) == 4 and b == (*a[:2], 1, 1)):
        return f"cannot multiply {a} by {b} (same shape, or (N, C, 1, 1) broadcast over the image)"
    return None if node.out_shape == a else "output shape differs from the first input's"


def _rule_slice(node: Node, plan: Plan) -> str | None:
    a, shape = node.attrs, node.in_shapes[0]
    if not 0 <= a.start < a.stop <= shape[1]:
        return f"channels [{a.start}, {a.stop}) out of range for {shape[1]}"
    return None if node.out_shape == (shape[0], a.stop - a.start, *shape[2:]) else "output shape wrong"


def _rule_pad(node: Node, plan: Plan) -> str | None:
    top, bottom, left, right = node.attrs.pads
    n, c, h, w = node.in_shapes[0]
    if min(node.attrs.pads) < 0:
        return "negative padding"
    return None if node.out_shape == (n, c, h + top + bottom, w + left + right) else "output shape wrong"


def _rule_resize(node: Node, plan: Plan) -> str | None:
    a, shape = node.attrs, node.in_shapes[0]
    if a.mode not in ("nearest", "bilinear") or (a.align_corners and a.mode != "bilinear"):
        return f"resize mode {a.mode!r} (align_corners={a.align_corners}) is not nearest or bilinear"
    return None if node.out_shape == (*shape[:2], *a.size) and min(a.size) > 0 else "output shape wrong"


def _rule_layernorm(node: Node, plan: Plan) -> str | None:
    c = node.in_shapes[0][1]
    if len(node.weights) != 2 or any(plan.consts[w].shape != (c,) for w in node.weights):
        return "layer norm needs a scale and a shift per channel"
    if not node.attrs.eps > 0:
        return "eps must be positive"
    return None if node.out_shape == node.in_shapes[0] else "output shape differs from the input's"


OP_RULES: dict[Op, Callable[[Node, Plan], str | None]] = {
    Op.CONV: _rule_conv,
    Op.MATMUL: _rule_matmul,
    Op.PERMUTE: _rule_permute,
    Op.SCATTER_ADD: _rule_scatter,
    Op.MAXPOOL: _rule_pool,
    Op.AVGPOOL: _rule_pool,
    Op.GLOBAL_AVGPOOL: _rule_pool,
    Op.ACT: _rule_act,
    Op.MUL: _rule_mul,
    Op.SLICE: _rule_slice,
    Op.PAD: _rule_pad,
    Op.RESIZE: _rule_resize,
    Op.LAYERNORM: _rule_layernorm,
}


def _block_problem(b: CEPDBlock) -> str | None:
    """What is wrong with a CEPD block's structure: a chain of steps from the (subsampled)
    input, the S conv reading that same value, the scatter joining the two, the epilogue last."""
    if not any(n.role is Role.STEP for n in b.nodes):
        return "no contraction step"
    chain = [n for n in b.nodes if n.role in (Role.STEP, Role.PERMUTE)]
    if chain[0].inputs[0] != b.branch_input:
        return "the chain does not start from the layer's input"
    for prev, n in zip(chain, chain[1:]):
        if n.inputs[0] != prev.output:
            return f"step {n.name!r} does not read the step before it"
    if (b.sparse is None) != (b.scatter is None):
        return "an S conv without a scatter (or the reverse)"
    if b.scatter is not None:
        if b.sparse.inputs[0] != b.branch_input:
            return "the S conv does not read the layer's input"
        if b.scatter.inputs[:2] != (chain[-1].output, b.sparse.output):
            return "the scatter does not join the chain's result and the S branch"
    if any(not n.epilogue.empty for n in b.nodes[:-1]):
        return "an epilogue before the layer's last op"
    return None


def verify(plan: Plan) -> None:
    """Raise :class:`CEPDError` naming the first node (or CEPD block) that breaks an invariant."""
    known = {plan.input: plan.input_shape}
    for node in plan.nodes:
        problem = _check(node, plan, known)
        if problem:
            raise CEPDError(f"invalid plan at node {node.name!r} ({node.op.value}): {problem}")
        known[node.output] = node.out_shape
    if plan.output not in known:
        raise CEPDError(f"invalid plan: output {plan.output!r} is never produced")
    for block in plan.blocks():
        problem = _block_problem(block)
        if problem:
            raise CEPDError(f"invalid plan: CEPD block {block.layer!r}: {problem}")


def _check(node: Node, plan: Plan, known: dict) -> str | None:
    if type(node.attrs) is not ATTRS[node.op]:
        return f"attributes are {type(node.attrs).__name__}, {node.op.value} takes {ATTRS[node.op].__name__}"
    if node.output in known:
        return f"value {node.output!r} produced twice"
    if len(node.inputs) != len(node.in_shapes) + (1 if node.epilogue.residual else 0):
        return "inputs and in_shapes differ in length"
    for x, shape in zip(node.inputs, node.in_shapes):
        if x not in known:
            return f"input {x!r} used before it is produced"
        if known[x] != shape:
            return f"input {x!r} has shape {known[x]}, node expects {shape}"
    if node.epilogue.residual and known.get(node.inputs[-1]) != node.out_shape:
        return "residual operand missing or of another shape"
    if not node.epilogue.empty and node.op not in EPILOGUE_OPS:
        return "this op cannot carry an epilogue"
    for w in node.weights:
        if w not in plan.consts:
            return f"weight {w!r} missing"
    expected = _weight_shape(node)
    if node.op in WEIGHTED and tuple(plan.consts[node.weights[0]].shape) != expected:
        return f"weight shape {plan.consts[node.weights[0]].shape} != {expected}"
    for c in (node.epilogue.scale, node.epilogue.bias):
        if c and tuple(plan.consts.get(c, [[]]).shape) != (node.out_shape[1],):
            return f"epilogue const {c!r} missing or not per-channel"
    rule = OP_RULES.get(node.op)
    return rule(node, plan) if rule else None
