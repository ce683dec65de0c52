"""Plan -> ONNX where each CEPD layer (a :class:`~cepd_deploy.plan.ir.CEPDBlock`) is one
``ai.cepd::TTSparseConv`` node; a CEPD layer the lowering rebuilt as one dense conv stays a Conv.

The node's inputs are the layer's Plan weights as they are (the TT step weights in contraction
order, the compact S filters, their output-channel ``index``, then the epilogue's scale/bias and
the residual); its attributes describe the step structure (``structure``: JSON, plus the usual
conv attributes). Each node carries a model-local function body of standard ops, built by the
portable handlers from ONNX ops on those inputs (onnxruntime folds the weight reshapes and the
placement matrix once at load), so stock runtimes run it; a runtime with a ``TTSparseConv``
kernel registered for the domain uses the kernel instead. Bodies are per layer (function
``overload`` = layer name) since shapes differ.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from cepd_deploy.errors import CEPDError
from cepd_deploy.native.layer import ACTS, KernelLayer
from cepd_deploy.plan.ir import WEIGHTED, CEPDBlock, Node, Plan
from cepd_deploy.targets.onnx.graph import OPSET, FunctionBuilder
from cepd_deploy.targets.onnx.portable import Emitter, WeightSource, to_onnx

DOMAIN = "ai.cepd"
OP_TYPE = "TTSparseConv"


class FunctionSource(WeightSource):
    """Weights of a function body: formal inputs, reshaped and scaled by ONNX ops."""

    def __init__(self, plan: Plan, b: FunctionBuilder, formals: dict[str, str]) -> None:
        super().__init__(plan, b)
        self.formals = formals  # const name (or "index") -> formal input name

    def get(self, const: str, shape, scale: str | None = None, name: str = "", rows: int = 0) -> str:
        v = self.formals[const]
        if tuple(self.array(const).shape) != tuple(shape):
            v = self.b.reshape(v, shape)
        if scale:
            s = self.b.reshape(self.formals[scale], (-1, *([1] * (len(shape) - 1))))
            v = self.b.node("Mul", [v, s])
        return self._pad(v, 0, rows - shape[0], len(shape)) if rows else v

    def _pad(self, v: str, axis: int, extra: int, rank: int) -> str:
        """``v`` with ``extra`` zero slices appended along ``axis``."""
        if extra <= 0:
            return v
        pads = [0] * (2 * rank)
        pads[rank + axis] = extra
        return self.b.node("Pad", [v, self.b.ints(pads)])

    def stacked(self, first: Node, s: Node, rows: int) -> str:
        cin = first.in_shapes[0][1]
        parts = [self.get(n.weights[0], (-1, cin)) for n in (first, s)]
        w = self._pad(self.b.node("Concat", parts, axis=0), 0, rows - first.out_shape[1] - s.out_shape[1], 2)
        return self.b.reshape(w, (rows, cin, 1, 1))

    def folded(self, step: Node, node: Node, scale: str | None, cols: int) -> str:
        w = self.get(step.weights[0], (node.out_shape[1], step.in_shapes[0][1], 1, 1), scale)
        return self.b.node("Concat", [w, self.placement(node, scale, cols)], axis=1)

    def scatter_nd_index(self, node: Node) -> str:
        n, kappa = node.out_shape[0], len(node.attrs.index)
        channel = self.b.node("Expand", [self.b.reshape(self.formals["index"], (1, kappa, 1)),
                                         self.b.ints((n, kappa, 1))])  # fmt: skip
        batch = self.b.const("batch_index", np.broadcast_to(np.arange(n).reshape(n, 1, 1), (n, kappa, 1)))
        return self.b.node("Concat", [batch, channel], axis=2)

    def index_scale(self, node: Node, scale: str) -> str:
        s = self.b.node("Gather", [self.formals[scale], self.formals["index"]], axis=0)
        return self.b.reshape(s, (1, -1, 1, 1))

    def placement(self, node: Node, scale: str | None, cols: int) -> str:
        out_c = node.out_shape[1]
        values = self.b.const("onehot_values", np.array([0.0, 1.0], np.float32))
        p = self.b.node("OneHot", [self.formals["index"], self.b.ints([out_c]), values], axis=0)
        p = self.b.reshape(p, (out_c, -1, 1, 1))
        if scale:
            p = self.b.node("Mul", [p, self.b.reshape(self.formals[scale], (-1, 1, 1, 1))])
        return self._pad(p, 1, cols - len(node.attrs.index), 4)


def check_block(plan: Plan, block: CEPDBlock) -> None:
    """Raise unless the block's ops are one contiguous run of the Plan that reads one value (and
    the residual) and whose inner values nothing after it reads: what one fused node can replace."""
    position = {n.name: i for i, n in enumerate(plan.nodes)}
    idx = [position[n.name] for n in block.nodes]
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise CEPDError(f"layer {block.layer!r}: its ops are not contiguous in the Plan")
    inner = {n.output for n in block.nodes}
    for n in plan.nodes[idx[-1] + 1 :]:
        if inner & set(n.inputs) - {block.output}:
            raise CEPDError(f"layer {block.layer!r}: an inner value is read outside the layer")
    external = {x for n in block.nodes for x in n.data_inputs if x not in inner}
    if external != {block.input}:
        raise CEPDError(f"layer {block.layer!r}: expected one input, found {sorted(external)}")


def structure(plan: Plan, block: CEPDBlock, kernel: KernelLayer) -> dict:
    """The ``structure`` attribute of a block's fused node (as a dict): the layer's name, layout,
    ranks and kernel, then ``kernel`` (the block's :class:`~cepd_deploy.native.layer.KernelLayer`)
    as JSON: ``steps`` lists the TT chain in order; the sparse branch is ``kappa`` filters over the
    (possibly subsampled) input with the window ``s_conv``."""
    info = plan.layers[block.layer]
    return {"layer": block.layer, "layout": info.layout, "ranks": list(info.ranks),
            "kernel": list(info.weight_shape[2:]), **kernel.to_json()}  # fmt: skip


def _function(plan: Plan, block: CEPDBlock, formals: dict[str, str], inputs: list[str]) -> onnx.FunctionProto:
    b = FunctionBuilder()
    rename = {block.input: "X", **({block.residual: "R"} if block.residual else {})}
    local = [replace(n, inputs=tuple(rename.get(i, i) for i in n.inputs)) for n in block.nodes]
    local[-1] = replace(local[-1], output="Y")
    sub = Plan("X", block.nodes[0].in_shapes[0], "Y", local, plan.consts, {})
    em = Emitter(sub, b, FunctionSource(sub, b, formals))
    b._taken.update(inputs)
    for n in local:
        em.emit(n)
    return helper.make_function(DOMAIN, OP_TYPE, inputs, ["Y"], b.nodes,
                                [helper.make_opsetid("", OPSET)], overload=block.layer)  # fmt: skip


def fused_emitter(plan: Plan):
    """An ``emit`` hook for :func:`to_onnx` that turns CEPD blocks into TTSparseConv nodes."""
    block_of = plan.block_of()
    for block in plan.blocks():
        check_block(plan, block)
    functions: list[onnx.FunctionProto] = []

    def emit(em: Emitter, node: Node) -> str:
        block = block_of.get(node.name)
        if block is None:
            return em.emit(node)
        if node.name != block.last.name:
            return node.output  # the whole layer is emitted at its last node
        layer = block.layer
        weights = [w for n in block.nodes if n.op in WEIGHTED for w in n.weights]
        formals = {w: f"W{k}" for k, w in enumerate(weights)}
        names = [em.b.const(w, plan.consts[w]) for w in weights]
        if block.scatter is not None:
            formals["index"] = "index"
            names.append(em.b.const(f"{layer}.index", np.array(block.index, np.int64)))
        e = block.epilogue
        for role, const in (("scale", e.scale), ("bias", e.bias)):
            if const:
                formals[const] = role
                names.append(em.b.const(const, plan.consts[const]))
        residual = block.residual
        formal_inputs = ["X", *formals.values()] + (["R"] if residual else [])
        functions.append(_function(plan, block, formals, formal_inputs))
        kernel = KernelLayer.from_block(block)
        st = structure(plan, block, kernel)
        ph, pw = kernel.convs[0].padding if kernel.convs else (0, 0)
        onnx_kw = dict(structure=json.dumps(st, separators=(",", ":")), act=kernel.act,
                       residual=int(bool(residual)), kernel_shape=st["kernel"],
                       pads=[ph, pw, ph, pw])  # fmt: skip
        try:  # the native kernel's descriptor (see ort_library)
            onnx_kw.update(native_desc=kernel.desc())
        except CEPDError:  # not run by the kernel: the custom-op library's reference path runs it
            if kernel.act in ACTS:
                onnx_kw.update(ref_desc=kernel.ref_desc())
        inputs = [block.input, *names] + ([residual] if residual else [])
        return em.b.node(OP_TYPE, inputs, node.output, domain=DOMAIN, overload=layer, **onnx_kw)

    return emit, functions


def to_onnx_fused(plan: Plan, *, name: str = "cepd") -> onnx.ModelProto:
    """The Plan as ONNX with one TTSparseConv node (and function body) per CEPD layer."""
    emit, functions = fused_emitter(plan)
    model = to_onnx(plan, name=name, emit=emit, extra_opsets={DOMAIN: 1})
    model.functions.extend(functions)
    return model
