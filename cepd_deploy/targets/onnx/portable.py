"""Plan -> ONNX with standard ops only (opset 18): a table op -> handler, like the reference.

Each handler emits the ONNX nodes of one Plan op and returns its output value plus the part of
the epilogue it did not absorb (a conv absorbs a per-channel scale into its weight and the bias
into its ``B`` input); :meth:`Emitter.epilogue` emits the rest (Mul, Add, residual Add, Relu or
Clip). Folded views are Reshapes around a Conv and are skipped when ``outer == 1``; a channel
matmul is a 1x1 Conv on the view (N*outer, cin, inner*H, W), which onnxruntime runs well.

The sparse branch's scatter-add (out = a; out[:, index] += b) has two forms, picked by kappa
(measured here, ResNet-50 shapes): with few kept filters (kappa <= FOLD_MAX_KAPPA) and ``a``
from a 1x1 step read by nothing else, it folds into that step, ``Conv(Concat(t, b), [W | P])``
with P the 0/1 (O, kappa) placement: one GEMM with kappa more input channels, O*kappa MACs per
pixel (onnxruntime's ScatterElements costs about a copy of ``a``, 2-4x the 1x1 step at 56x56).
With many kept filters those MACs outgrow the step itself (2048x205 at 7x7), so it is a
``ScatterElements(a, index, b, reduction="add")``; a non-foldable small scatter is
``Conv(b, P) + a``.

Weights come from a :class:`WeightSource`: initializers computed in numpy for the portable
graph, or ONNX ops on a fused node's inputs inside a function body (``fused.py``), so both
exports share these handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import onnx

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Epilogue, Node, Op, Plan
from cepd_deploy.targets.onnx.graph import GraphBuilder, make_model, value_info

Handler = Callable[["Emitter", Node], tuple[str, Epilogue]]


class WeightSource:
    """Plan consts as initializers (numpy does the reshapes and scale folds)."""

    def __init__(self, plan: Plan, b: GraphBuilder) -> None:
        self.plan, self.b = plan, b

    def array(self, const: str) -> np.ndarray:
        return np.asarray(self.plan.consts[const], dtype=np.float32)

    def get(self, const: str, shape: Sequence[int], scale: str | None = None, name: str = "") -> str:
        """``const`` reshaped to ``shape``, times ``scale`` along the first axis if given."""
        w = self.array(const).reshape(shape)
        if scale:
            w = w * self.array(scale).reshape(-1, *([1] * (len(shape) - 1)))
        return self.b.const(name or const, w)

    def _placement(self, node: Node, scale: str | None) -> np.ndarray:
        index = node.attrs["index"]
        place = np.zeros((node.out_shape[1], len(index), 1, 1), np.float32)
        place[list(index), np.arange(len(index))] = 1.0
        if scale:
            place *= self.array(scale).reshape(-1, 1, 1, 1)
        return place

    def placement(self, node: Node, scale: str | None = None) -> str:
        """The (O, kappa, 1, 1) 0/1 matrix putting a scatter's kappa channels at its index."""
        return self.b.const(f"{node.name}.place", self._placement(node, scale))

    def scatter_index(self, node: Node) -> str:
        """ScatterElements indices: the scatter's index broadcast to the shape of its updates."""
        index = np.array(node.attrs["index"], np.int64).reshape(1, -1, 1, 1)
        small = self.b.const(f"{node.name}.index", index)
        return self.b.node("Expand", [small, self.b.ints(node.in_shapes[1])])

    def folded(self, step: Node, node: Node, scale: str | None = None) -> str:
        """[W | P]: a 1x1 step's weight joined with the placement of the scatter it feeds."""
        w = self.array(step.weights[0]).reshape(node.out_shape[1], -1, 1, 1)
        if scale:
            w = w * self.array(scale).reshape(-1, 1, 1, 1)
        return self.b.const(f"{step.name}.w", np.concatenate([w, self._placement(node, scale)], 1))


class Emitter:
    """Emits a Plan's nodes into a :class:`GraphBuilder`, one handler per op."""

    def __init__(self, plan: Plan, builder: GraphBuilder | None = None,
                 source: WeightSource | None = None) -> None:  # fmt: skip
        self.plan = plan
        self.b = builder or GraphBuilder()
        self.b._taken.add(plan.input)
        self.src = source or WeightSource(plan, self.b)
        self.folded = _foldable_scatters(plan.nodes)  # 1x1 step name -> the scatter it folds into
        self.producers = {n.output: n for n in plan.nodes}

    def emit(self, node: Node) -> str:
        if node.name in self.folded:
            return node.output  # emitted by the scatter-add it folds into
        handler = HANDLERS.get(node.op)
        if handler is None:
            raise CEPDError(f"the onnx target cannot export op {node.op.value!r} ({node.name})")
        self.b.scope = node.name
        try:
            y, rest = handler(self, node)
            return self.epilogue(node, y, rest)
        finally:
            self.b.scope = ""

    def epilogue(self, node: Node, y: str, e: Epilogue) -> str:
        """Emit what is left of an epilogue; the last op writes ``node.output``."""
        shape = (1, -1, 1, 1) if len(node.out_shape) == 4 else (1, -1)
        steps: list[tuple[str, list[str]]] = []
        if e.scale:
            steps.append(("Mul", [self.src.get(e.scale, shape)]))
        if e.bias:
            steps.append(("Add", [self.src.get(e.bias, shape)]))
        if e.residual:
            steps.append(("Add", [node.inputs[-1]]))
        if e.act == "relu":
            steps.append(("Relu", []))
        elif e.act == "relu6":
            steps.append(("Clip", [self.b.scalar(0.0), self.b.scalar(6.0)]))
        if not steps:
            return self.b.rename(y, node.output)
        for k, (op, extra) in enumerate(steps):
            y = self.b.node(op, [y, *extra], node.output if k == len(steps) - 1 else None)
        return y

    def conv(self, node: Node, x: str, weight: str | tuple, attrs: dict, folds: bool,
             in_view: tuple[int, ...]) -> tuple[str, Epilogue]:  # fmt: skip
        """A Conv on a folded view; with ``folds`` the epilogue scale and bias go into W and B.

        ``weight``: a value name, or (const, 4-D shape) to fetch from the source (scaled).
        """
        e = node.epilogue
        if isinstance(weight, tuple):
            weight = self.src.get(*weight, scale=e.scale if folds else None, name=f"{node.name}.w")
        elif folds and e.scale:
            raise CEPDError(f"{node.name}: cannot fold a scale into a computed weight")
        reshaped = tuple(node.in_shapes[0]) != in_view
        inputs = [self.b.reshape(x, in_view) if reshaped else x, weight]
        if folds and e.bias:
            inputs.append(self.src.get(e.bias, (-1,)))
        y = self.b.node("Conv", inputs, **attrs)
        if reshaped:
            y = self.b.reshape(y, node.out_shape)
        return y, (replace(e, scale=None, bias=None) if folds else e)


def _conv_attrs(a: dict) -> dict:
    ph, pw = a["padding"]
    return dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=[ph, pw, ph, pw],
                dilations=list(a["dilation"]), group=a["groups"])  # fmt: skip


def _conv(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    n, _, h, w = node.in_shapes[0]
    shape = (a["cout"], a["cin"] // a["groups"], *a["kernel"])
    return em.conv(node, node.inputs[0], (node.weights[0], shape), _conv_attrs(a), a["outer"] == 1,
                   (n * a["outer"], a["cin"], h, w))  # fmt: skip


def _matmul(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    n, _, h, w = node.in_shapes[0]
    in_view = (n * a["outer"], a["cin"], a["inner"] * h, w)
    folds = a["outer"] == 1 and a["inner"] == 1
    weight = (node.weights[0], (a["cout"], a["cin"], 1, 1))
    return em.conv(node, node.inputs[0], weight, dict(kernel_shape=[1, 1]), folds, in_view)


def _linear(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    e = node.epilogue
    fout, fin = node.out_shape[1], node.in_shapes[0][1]
    inputs = [node.inputs[0], em.src.get(node.weights[0], (fout, fin), e.scale, f"{node.name}.w")]
    if e.bias:
        inputs.append(em.src.get(e.bias, (-1,)))
    return em.b.node("Gemm", inputs, transB=1), replace(e, scale=None, bias=None)


def _affine(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    scale, shift = (em.src.get(k, (1, -1, 1, 1)) for k in node.weights)
    y = em.b.node("Mul", [node.inputs[0], scale])
    return em.b.node("Add", [y, shift]), node.epilogue


def _permute(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    n, c, h, w = node.in_shapes[0]
    axes, perm = node.attrs["axes"], node.attrs["perm"]
    k = len(axes)
    y = em.b.reshape(node.inputs[0], (n, *axes, h * w))
    y = em.b.node("Transpose", [y], perm=[0, *(p + 1 for p in perm), k + 1])
    return em.b.reshape(y, node.out_shape), node.epilogue


#: Largest kappa whose scatter-add folds into the last 1x1 step (above it: ScatterElements).
FOLD_MAX_KAPPA = 40


def _foldable_scatters(nodes: Sequence[Node]) -> dict[str, str]:
    readers: dict[str, int] = {}
    for n in nodes:
        for x in n.inputs:
            readers[x] = readers.get(x, 0) + 1
    by_output = {n.output: n for n in nodes}
    out = {}
    for n in nodes:
        prod = by_output.get(n.inputs[0]) if n.op is Op.SCATTER_ADD else None
        if prod is None or n.in_shapes[1][1] > FOLD_MAX_KAPPA:
            continue
        if readers[prod.output] == 1 and prod.epilogue.empty and _is_1x1(prod):
            out[prod.name] = n.name
    return out


def _is_1x1(node: Node) -> bool:
    a = node.attrs
    if node.op is Op.MATMUL:
        return a["outer"] == 1 and a["inner"] == 1
    return (node.op is Op.CONV and a["outer"] == 1 and a["groups"] == 1 and a["kernel"] == (1, 1)
            and a["stride"] == (1, 1) and a["padding"] == (0, 0))  # fmt: skip


def _scatter_add(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a, b = node.inputs[:2]
    e = node.epilogue
    kappa = node.in_shapes[1][1]
    prod = em.producers.get(a)
    if prod is not None and em.folded.get(prod.name) == node.name:
        cin = prod.in_shapes[0][1]
        weight = em.src.folded(prod, node, e.scale)
        joined = em.b.node("Concat", [prod.inputs[0], b], axis=1)
        view = (node.out_shape[0], cin + kappa, *node.out_shape[2:])
        y, _ = em.conv(replace(node, in_shapes=(view,), epilogue=replace(e, scale=None)), joined,
                       weight, dict(kernel_shape=[1, 1]), True, view)  # fmt: skip
        return y, replace(e, scale=None, bias=None)
    if kappa > FOLD_MAX_KAPPA:
        y = em.b.node("ScatterElements", [a, em.src.scatter_index(node), b], axis=1, reduction="add")
        return y, e
    if e.scale:  # y*s = a*s + (P*s) b
        a = em.b.node("Mul", [a, em.src.get(e.scale, (1, -1, 1, 1))])
    inputs = [b, em.src.placement(node, e.scale)]
    if e.bias:
        inputs.append(em.src.get(e.bias, (-1,)))
    y = em.b.node("Conv", inputs, kernel_shape=[1, 1])
    return em.b.node("Add", [y, a]), replace(e, scale=None, bias=None)


def _pool(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    ph, pw = a["padding"]
    attrs = dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=[ph, pw, ph, pw],
                 ceil_mode=int(a.get("ceil_mode", False)))  # fmt: skip
    if node.op is Op.AVGPOOL:
        attrs["count_include_pad"] = 1
    op = "MaxPool" if node.op is Op.MAXPOOL else "AveragePool"
    return em.b.node(op, [node.inputs[0]], **attrs), node.epilogue


def _simple(op_type: str, **attrs) -> Handler:
    def handler(em: Emitter, node: Node) -> tuple[str, Epilogue]:
        return em.b.node(op_type, list(node.data_inputs), **attrs), node.epilogue

    return handler


def _relu(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    # RELU carries no epilogue of its own (not in EPILOGUE_OPS): the act is emitted as one
    return node.inputs[0], Epilogue(act="relu6" if node.attrs.get("max") == 6.0 else "relu")


HANDLERS: dict[Op, Handler] = {
    Op.CONV: _conv,
    Op.MATMUL: _matmul,
    Op.LINEAR: _linear,
    Op.AFFINE: _affine,
    Op.PERMUTE: _permute,
    Op.SCATTER_ADD: _scatter_add,
    Op.CONCAT: _simple("Concat", axis=1),
    Op.FLATTEN: _simple("Flatten", axis=1),
    Op.ADD: _simple("Add"),
    Op.RELU: _relu,
    Op.MAXPOOL: _pool,
    Op.AVGPOOL: _pool,
    Op.GLOBAL_AVGPOOL: _simple("GlobalAveragePool"),
}
#: Plan ops this target cannot export (none today; a test keeps the table complete).
UNSUPPORTED: frozenset[Op] = frozenset()


def to_onnx(plan: Plan, *, name: str = "cepd", emit: Callable[[Emitter, Node], str] | None = None,
            **model_kw) -> onnx.ModelProto:  # fmt: skip
    """The whole Plan as an ONNX model (``emit`` may replace how some nodes are emitted)."""
    em = Emitter(plan)
    for node in plan.nodes:
        (emit or Emitter.emit)(em, node)
    out = plan.output
    if out == plan.input:
        out = em.b.node("Identity", [plan.input], "output")
    return make_model(em.b, [value_info(plan.input, plan.input_shape)],
                      [value_info(out, plan.output_shape)], name=name, **model_kw)  # fmt: skip
