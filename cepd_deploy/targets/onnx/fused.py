"""Plan -> ONNX where each CEPD layer is one ``ai.cepd::TTSparseConv`` node.

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
from contextlib import suppress
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import WEIGHTED, Node, Op, Plan
from cepd_deploy.targets.onnx.graph import OPSET, FunctionBuilder
from cepd_deploy.targets.onnx.native import _desc as native_desc
from cepd_deploy.targets.onnx.native import supported as native_supported
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
        n, kappa = node.out_shape[0], len(node.attrs["index"])
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
        return self._pad(p, 1, cols - len(node.attrs["index"]), 4)


def layer_io(plan: Plan, layer: str) -> tuple[list[Node], str, str | None]:
    """A CEPD layer's nodes, its input value and its residual value (or None).

    Raises if the layer's nodes are not one contiguous run whose inner values stay inside.
    """
    idx = [i for i, n in enumerate(plan.nodes) if n.layer == layer]
    nodes = [plan.nodes[i] for i in idx]
    if not nodes or idx != list(range(idx[0], idx[-1] + 1)):
        raise CEPDError(f"layer {layer!r}: its ops are not contiguous in the Plan")
    inner = {n.output for n in nodes}
    last = nodes[-1]
    for n in plan.nodes[idx[-1] + 1 :]:
        if inner & set(n.inputs) - {last.output}:
            raise CEPDError(f"layer {layer!r}: an inner value is read outside the layer")
    residual = last.inputs[-1] if last.epilogue.residual else None
    external = {x for n in nodes for x in n.data_inputs if x not in inner}
    if len(external) != 1:
        raise CEPDError(f"layer {layer!r}: expected one input, found {sorted(external)}")
    return nodes, external.pop(), residual


def structure(nodes: list[Node], **info) -> dict:
    """The step structure of a CEPD layer's nodes (the ``structure`` attribute, as a dict).

    ``steps`` lists the TT chain (matmul / conv with its window / permute) in order; the sparse
    branch is ``kappa`` filters over the (possibly subsampled) input with the conv's window.
    """
    steps = []
    s_node = sub = scatter = None
    for n in nodes:
        a = n.attrs
        if n.op is Op.MAXPOOL:
            sub = n
        elif n.op is Op.SCATTER_ADD:
            scatter = n
        elif n.op is Op.CONV and scatter is None and n.name.endswith(".s"):
            s_node = n
        elif n.op is Op.PERMUTE:
            steps.append({"op": "permute", "axes": list(a["axes"]), "perm": list(a["perm"])})
        elif n.op in (Op.MATMUL, Op.CONV):
            step = {"op": n.op.value, "outer": a["outer"], "cin": a["cin"], "cout": a["cout"],
                    "inner": a.get("inner", 1)}  # fmt: skip
            if n.op is Op.CONV:
                step.update(kernel=list(a["kernel"]), stride=list(a["stride"]), padding=list(a["padding"]),
                            dilation=list(a["dilation"]), groups=a["groups"])  # fmt: skip
            steps.append(step)
    e = nodes[-1].epilogue
    return {
        **info, "kappa": len(scatter.attrs["index"]) if scatter else 0,
        "in_shape": list(nodes[0].in_shapes[0]), "out_shape": list(nodes[-1].out_shape),
        "subsample": list(sub.attrs["stride"]) if sub else [1, 1],
        "s_conv": {"kernel": list(s_node.attrs["kernel"]), "stride": list(s_node.attrs["stride"]),
                   "padding": list(s_node.attrs["padding"]),
                   "dilation": list(s_node.attrs["dilation"])} if s_node else None,
        "steps": steps, "scale": bool(e.scale), "bias": bool(e.bias), "residual": e.residual,
        "act": e.act or "",
    }  # fmt: skip


def _function(plan: Plan, layer: str, nodes: list[Node], x: str, residual: str | None,
              formals: dict[str, str], inputs: list[str]) -> onnx.FunctionProto:  # fmt: skip
    b = FunctionBuilder()
    rename = {x: "X", **({residual: "R"} if residual else {})}
    local = [replace(n, inputs=tuple(rename.get(i, i) for i in n.inputs)) for n in nodes]
    local[-1] = replace(local[-1], output="Y")
    sub = Plan("X", nodes[0].in_shapes[0], "Y", local, plan.consts, {})
    em = Emitter(sub, b, FunctionSource(sub, b, formals))
    b._taken.update(inputs)
    for n in local:
        em.emit(n)
    return helper.make_function(DOMAIN, OP_TYPE, inputs, ["Y"], b.nodes,
                                [helper.make_opsetid("", OPSET)], overload=layer)  # fmt: skip


def fused_emitter(plan: Plan):
    """An ``emit`` hook for :func:`to_onnx` that turns CEPD layers into TTSparseConv nodes."""
    cepd = {name for name, info in plan.layers.items() if info.kind == "cepd"}
    functions: list[onnx.FunctionProto] = []

    def emit(em: Emitter, node: Node) -> str:
        if node.layer not in cepd:
            return em.emit(node)
        nodes, x, residual = layer_io(plan, node.layer)
        if node is not nodes[-1]:
            return node.output  # the whole layer is emitted at its last node
        layer = node.layer
        weights = [w for n in nodes if n.op in WEIGHTED for w in n.weights]
        formals = {w: f"W{k}" for k, w in enumerate(weights)}
        names = [em.b.const(w, plan.consts[w]) for w in weights]
        scatter = next((n for n in nodes if n.op is Op.SCATTER_ADD), None)
        if scatter is not None:
            formals["index"] = "index"
            names.append(em.b.const(f"{layer}.index", np.array(scatter.attrs["index"], np.int64)))
        e = node.epilogue
        for role, const in (("scale", e.scale), ("bias", e.bias)):
            if const:
                formals[const] = role
                names.append(em.b.const(const, plan.consts[const]))
        formal_inputs = ["X", *formals.values()] + (["R"] if residual else [])
        functions.append(_function(plan, layer, nodes, x, residual, formals, formal_inputs))
        info = plan.layers[layer]
        st = structure(nodes, layer=layer, layout=info.layout, ranks=list(info.ranks),
                       kernel=list(info.weight_shape[2:]))  # fmt: skip
        conv = next((s for s in st["steps"] if s["op"] == "conv"), {"padding": [0, 0]})
        ph, pw = conv["padding"]
        attrs = dict(structure=json.dumps(st, separators=(",", ":")), act=st["act"],
                     residual=int(bool(residual)), kernel_shape=st["kernel"], pads=[ph, pw, ph, pw])
        if native_supported(st) is None:  # the native kernel's descriptor (see ort_library)
            with suppress(CEPDError):
                attrs["native_desc"] = native_desc(st)
        inputs = [x, *names] + ([residual] if residual else [])
        return em.b.node(OP_TYPE, inputs, node.output, domain=DOMAIN, overload=layer, **attrs)

    return emit, functions


def to_onnx_fused(plan: Plan, *, name: str = "cepd") -> onnx.ModelProto:
    """The Plan as ONNX with one TTSparseConv node (and function body) per CEPD layer."""
    emit, functions = fused_emitter(plan)
    model = to_onnx(plan, name=name, emit=emit, extra_opsets={DOMAIN: 1})
    model.functions.extend(functions)
    return model
