"""Plan -> ONNX with standard ops only (opset 18): a table op -> handler, like the reference.

Each handler emits the ONNX nodes of one Plan op and returns its output value plus the part of
the epilogue it did not absorb (a conv absorbs a per-channel scale into its weight and the bias
into its ``B`` input); :meth:`Emitter.epilogue` emits the rest (Mul, Add, residual Add, Relu or
Clip). Folded views are Reshapes around a Conv and are skipped when ``outer == 1``; a channel
matmul is a 1x1 Conv on the view (N*outer, cin, inner*H, W), which onnxruntime runs well.

The sparse branch's scatter-add (out = a; out[:, index] += b) has two kinds of form (measured
here on ResNet-50 shapes). When ``a`` comes from a 1x1 step read by nothing else, the scatter
emits that step itself. With few kept filters (``placement_pays``) it is placed by MACs: P the
0/1 (O, kappa) placement, ``Conv(t', [W | P])`` with t' = ``Concat(t, b)`` ("fold"), or, in a
1x1 CEPD conv whose first step and S read the same input, t' = ``Conv(x, [W1; S])`` ("joint":
two matmuls, no scatter left); everything stays in onnxruntime's blocked layout. With more
kept filters (2048x205 at 7x7, or 1024x102 behind a rank-16 chain) b goes in with
``ScatterND(reduction="add")``, which adds whole HxW planes: into the residual when there is
one, so that the step, its bias, the residual add and the ReLU stay one fused conv
(``Conv(t, W, B) + ScatterND(R, index, b)``), else into the step's output. A scatter whose
``a`` is not such a step is ``Conv(b, P) + a`` for few kept filters ("place"), else a
ScatterND on ``a``.

onnxruntime runs convs in a blocked layout (NCHWc: channels in blocks of 16 floats on AVX-512)
and pads a conv's output channels to the block anyway; a value whose channel count is not a
multiple of the block leaves that layout (two reorder copies). So the compact S conv feeding
a fold or a placement conv is emitted with its filters padded by zero filters to
``CHANNEL_BLOCK`` (P gets zero columns), and a joint's width is padded the same way: the same
work onnxruntime does, with no reorders.

Weights come from a :class:`WeightSource`: initializers computed in numpy for the portable
graph, or ONNX ops on a fused node's inputs inside a function body (``fused.py``), so both
exports share these handlers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.cost import nodes_macs
from cepd_deploy.plan.ir import (
    ActAttrs,
    ConvAttrs,
    Epilogue,
    MatmulAttrs,
    Node,
    NormAttrs,
    Op,
    PadAttrs,
    Plan,
    PoolAttrs,
    ReluAttrs,
    ResizeAttrs,
    SliceAttrs,
)
from cepd_deploy.plan.passes import is_pointwise
from cepd_deploy.targets.onnx.graph import GraphBuilder, make_model, value_info

Handler = Callable[["Emitter", Node], tuple[str, Epilogue]]


#: Channel block of onnxruntime's NCHWc convs on AVX-512 (a multiple of AVX2's 8).
CHANNEL_BLOCK = 16


def padded(channels: int, block: int = CHANNEL_BLOCK) -> int:
    """``channels`` rounded up to a multiple of ``block``."""
    return -(-channels // block) * block


class WeightSource:
    """Plan consts as initializers (numpy does the reshapes and scale folds)."""

    def __init__(self, plan: Plan, b: GraphBuilder) -> None:
        self.plan, self.b = plan, b

    def array(self, const: str) -> np.ndarray:
        return np.asarray(self.plan.consts[const], dtype=np.float32)

    def get(self, const: str, shape: Sequence[int], scale: str | None = None, name: str = "",
            rows: int = 0) -> str:  # fmt: skip
        """``const`` reshaped to ``shape``, times ``scale`` along the first axis if given, and
        padded with zero rows (filters) to ``rows`` along the first axis if that is larger."""
        w = self.array(const).reshape(shape)
        if scale:
            w = w * self.array(scale).reshape(-1, *([1] * (len(shape) - 1)))
        if rows > w.shape[0]:
            w = np.concatenate([w, np.zeros((rows - w.shape[0], *w.shape[1:]), np.float32)])
        return self.b.const(name or const, w)

    def _placement(self, node: Node, scale: str | None, cols: int) -> np.ndarray:
        index = node.attrs.index
        place = np.zeros((node.out_shape[1], cols, 1, 1), np.float32)
        place[list(index), np.arange(len(index))] = 1.0
        if scale:
            place *= self.array(scale).reshape(-1, 1, 1, 1)
        return place

    def placement(self, node: Node, scale: str | None, cols: int) -> str:
        """The (O, cols, 1, 1) 0/1 matrix putting a scatter's kappa channels at its index (its
        columns past kappa are zero: they meet the zero filters of a padded S)."""
        return self.b.const(f"{node.name}.place", self._placement(node, scale, cols))

    def scatter_nd_index(self, node: Node) -> str:
        """ScatterND indices (N, kappa, 2): (batch, channel) pairs selecting HxW planes."""
        n, index = node.out_shape[0], np.array(node.attrs.index, np.int64)
        pairs = np.stack(np.broadcast_arrays(np.arange(n)[:, None], index[None, :]), -1)
        return self.b.const(f"{node.name}.nd_index", pairs.astype(np.int64))

    def index_scale(self, node: Node, scale: str) -> str:
        """``scale`` at the scatter's index, shaped (1, kappa, 1, 1)."""
        s = self.array(scale).reshape(-1)[list(node.attrs.index)]
        return self.b.const(f"{node.name}.index_scale", s.reshape(1, -1, 1, 1))

    def stacked(self, first: Node, s: Node, rows: int) -> str:
        """[W1; S; 0] as (rows, cin, 1, 1): a 1x1 step and a 1x1 S conv on the same input."""
        cin = first.in_shapes[0][1]
        parts = [self.array(n.weights[0]).reshape(-1, cin) for n in (first, s)]
        w = np.concatenate(parts + [np.zeros((rows - sum(len(p) for p in parts), cin), np.float32)])
        return self.b.const(f"{first.name}.joint.w", w.reshape(rows, cin, 1, 1))

    def folded(self, step: Node, node: Node, scale: str | None, cols: int) -> str:
        """[W | P]: a 1x1 step's weight joined with the placement of the scatter it feeds."""
        w = self.array(step.weights[0]).reshape(node.out_shape[1], -1, 1, 1)
        if scale:
            w = w * self.array(scale).reshape(-1, 1, 1, 1)
        place = self._placement(node, scale, cols)
        return self.b.const(f"{step.name}.w", np.concatenate([w, place], 1))


class Emitter:
    """Emits a Plan's nodes into a :class:`GraphBuilder`, one handler per op."""

    def __init__(self, plan: Plan, builder: GraphBuilder | None = None,
                 source: WeightSource | None = None) -> None:  # fmt: skip
        self.plan = plan
        self.b = builder or GraphBuilder()
        self.b._taken.add(plan.input)
        self.src = source or WeightSource(plan, self.b)
        self.scatters = scatter_forms(plan)  # scatter name -> ScatterForm
        self.deferred = {n.name for f in self.scatters.values() for n in (f.step, f.first) if n}
        self.deferred |= {f.s_node.name for f in self.scatters.values() if f.form == "joint"}
        self.padded = {f.s_node.name: f.channels for f in self.scatters.values()
                       if f.s_node is not None and f.form != "joint"}  # fmt: skip

    def emit(self, node: Node) -> str:
        if node.name in self.deferred:
            return node.output  # emitted by the scatter-add it feeds
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

        ``weight``: a value name, or (const, 4-D shape) to fetch from the source (scaled, and
        padded with zero filters when the node is a padded S conv).
        """
        e = node.epilogue
        if isinstance(weight, tuple):
            weight = self.src.get(*weight, scale=e.scale if folds else None, name=f"{node.name}.w",
                                  rows=self.padded.get(node.name, 0))  # fmt: skip
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


def _conv_attrs(a: ConvAttrs) -> dict:
    ph, pw = a.padding
    return dict(kernel_shape=list(a.kernel), strides=list(a.stride), pads=[ph, pw, ph, pw],
                dilations=list(a.dilation), group=a.groups)  # fmt: skip


def _conv(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    assert isinstance(a, ConvAttrs)
    n, _, h, w = node.in_shapes[0]
    shape = (a.cout, a.cin // a.groups, *a.kernel)
    return em.conv(node, node.inputs[0], (node.weights[0], shape), _conv_attrs(a), a.outer == 1,
                   (n * a.outer, a.cin, h, w))  # fmt: skip


def _matmul(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    assert isinstance(a, MatmulAttrs)
    n, _, h, w = node.in_shapes[0]
    in_view = (n * a.outer, a.cin, a.inner * h, w)
    folds = a.outer == 1 and a.inner == 1
    weight = (node.weights[0], (a.cout, a.cin, 1, 1))
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
    axes, perm = node.attrs.axes, node.attrs.perm
    k = len(axes)
    y = em.b.reshape(node.inputs[0], (n, *axes, h * w))
    y = em.b.node("Transpose", [y], perm=[0, *(p + 1 for p in perm), k + 1])
    return em.b.reshape(y, node.out_shape), node.epilogue


#: Largest (padded) kappa placed by MACs (a fold or ``Conv(b, P)``) rather than a ScatterND:
#: the placement costs kappa MACs per output element, a ScatterND about four memory passes
#: (it works on the plain layout: reorders out of and back into the blocked one, and the add
#: and ReLU that no longer fuse into the conv); the break-even in single-layer runs here was near 128.
PLACE_MAX_KAPPA = 128
#: ... and only while the placement MACs stay under this share of the layer's own MACs (an
#: expanding 1x1 layer, 256 -> 1024 with 102 kept filters at rank 16, would more than double).
PLACE_MAX_SHARE = 0.5


def placement_pays(kappa: int, out_channels: int, pixels: int, layer_macs: int) -> bool:
    """Whether a scatter of ``kappa`` (padded) channels into ``out_channels`` at ``pixels``
    output positions is cheaper as placement MACs than as a ScatterND (see PLACE_MAX_*)."""
    return kappa <= PLACE_MAX_KAPPA and kappa * out_channels * pixels <= PLACE_MAX_SHARE * layer_macs


@dataclass(frozen=True)
class ScatterForm:
    """How one scatter-add is emitted (see the module docstring).

    ``form``: "joint", "fold", "place" or "nd". ``step``: the 1x1 step producing ``a`` that the
    scatter emits itself (or None); ``first``: for "joint", the 1x1 step before ``step``, which
    shares its input with the 1x1 S conv; ``s_node``: the S conv, when the scatter emits it too
    ("joint") or pads it with zero filters ("fold", "place"); ``channels``: the width of the
    placement (kappa, padded for the blocked layout).
    """

    form: str
    step: Node | None
    first: Node | None
    s_node: Node | None
    channels: int


def scatter_forms(plan: Plan) -> dict[str, ScatterForm]:
    """The emission form of the scatter-add of every CEPD block of a Plan (by scatter name)."""
    uses, producer = plan.readers(), plan.producer()

    def single(value: str, among: tuple[Node, ...]) -> Node | None:
        """The node of ``among`` writing ``value``, if only one node reads it and it has no epilogue."""
        p = producer.get(value)
        return p if p is not None and uses[value] == 1 and p.epilogue.empty and p in among else None

    out = {}
    for block in plan.blocks():
        n = block.scatter
        if n is None:
            continue
        kappa, cout = block.kappa, n.out_shape[1]
        pixels = math.prod(n.out_shape) // cout
        layer_macs = nodes_macs(block.nodes)
        step = single(block.chain_output, block.steps)
        step = step if step is not None and is_pointwise(step) else None
        s = single(n.inputs[1], (block.sparse,))
        paddable = s is not None and isinstance(s.attrs, ConvAttrs | MatmulAttrs) and s.attrs.outer == 1
        first = single(step.inputs[0], block.steps) if step is not None else None
        if first is not None and is_pointwise(first) and s is not None and is_pointwise(s) \
                and s.inputs[0] == first.inputs[0]:  # fmt: skip
            r = first.out_shape[1]
            k = padded(r + kappa) - r
            if placement_pays(k, cout, pixels, layer_macs):
                out[n.name] = ScatterForm("joint", step, first, s, k)
                continue
        k = padded(kappa) if paddable else kappa
        if not placement_pays(k, cout, pixels, layer_macs):
            out[n.name] = ScatterForm("nd", step, None, None, kappa)
            continue
        form = "fold" if step is not None else "place"
        out[n.name] = ScatterForm(form, step, None, s if paddable and k > kappa else None, k)
    return out


def _scatter_add(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a, b = node.inputs[:2]
    e = node.epilogue
    f = em.scatters[node.name]
    rest = replace(e, scale=None, bias=None)
    if f.form in ("joint", "fold"):  # Conv(t', [W | P]) with the epilogue's scale and bias
        if f.form == "joint":  # t' = Conv(x, [W1; S; 0]): the first step and S as one matmul
            x, r = f.first.inputs[0], f.first.out_shape[1]
            rows = r + f.channels
            t = em.b.node("Conv", [x, em.src.stacked(f.first, f.s_node, rows)], kernel_shape=[1, 1])
        else:  # t' = Concat(t, b)
            r = f.step.in_shapes[0][1]
            t = em.b.node("Concat", [f.step.inputs[0], b], axis=1)
        weight = em.src.folded(f.step, node, e.scale, f.channels)
        view = (node.out_shape[0], r + f.channels, *node.out_shape[2:])
        y, _ = em.conv(replace(node, in_shapes=(view,), epilogue=replace(e, scale=None)), t,
                       weight, dict(kernel_shape=[1, 1]), True, view)  # fmt: skip
        return y, rest
    if f.form == "place":  # Conv(b, P) + a
        if e.scale:  # y*s = a*s + (P*s) b
            a = em.b.node("Mul", [a, em.src.get(e.scale, (1, -1, 1, 1))])
        inputs = [b, em.src.placement(node, e.scale, f.channels)]
        if e.bias:
            inputs.append(em.src.get(e.bias, (-1,)))
        y = em.b.node("Conv", inputs, kernel_shape=[1, 1])
        return em.b.node("Add", [y, a]), rest
    # ScatterND adds b's HxW planes; (a + P b) * s = a * s + P (b * s[index])
    if e.scale:
        b = em.b.node("Mul", [b, em.src.index_scale(node, e.scale)])
    index = em.src.scatter_nd_index(node)
    if f.step is None:
        if e.scale:
            a = em.b.node("Mul", [a, em.src.get(e.scale, (1, -1, 1, 1))])
        y = em.b.node("ScatterND", [a, index, b], reduction="add")
        return y, replace(rest, bias=e.bias)
    step = f.step
    view = step.in_shapes[0]
    shape = (node.out_shape[1], view[1], 1, 1)
    y, _ = em.conv(replace(node, in_shapes=(view,), epilogue=e), step.inputs[0],
                   (step.weights[0], shape), dict(kernel_shape=[1, 1]), True, view)  # fmt: skip
    if e.residual:  # into the residual: Conv + Add + Relu stay one fused conv
        r = em.b.node("ScatterND", [node.inputs[-1], index, b], reduction="add")
        return em.b.node("Add", [y, r]), replace(rest, residual=False)
    return em.b.node("ScatterND", [y, index, b], reduction="add"), rest


def _pool(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    assert isinstance(a, PoolAttrs)
    ph, pw = a.padding
    onnx_kw = dict(kernel_shape=list(a.kernel), strides=list(a.stride), pads=[ph, pw, ph, pw],
                   ceil_mode=int(a.ceil_mode))  # fmt: skip
    if node.op is Op.AVGPOOL:
        onnx_kw.update(count_include_pad=1)
    op = "MaxPool" if node.op is Op.MAXPOOL else "AveragePool"
    return em.b.node(op, [node.inputs[0]], **onnx_kw), node.epilogue


def _simple(op_type: str, **attrs) -> Handler:
    def handler(em: Emitter, node: Node) -> tuple[str, Epilogue]:
        return em.b.node(op_type, list(node.data_inputs), **attrs), node.epilogue

    return handler


def _relu(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    # RELU carries no epilogue of its own (not in EPILOGUE_OPS): the act is emitted as one
    assert isinstance(node.attrs, ReluAttrs)
    return node.inputs[0], Epilogue(act="relu6" if node.attrs.max == 6.0 else "relu")


# -- modern-network ops (Plan semantics: plan/reference.py) ----------------------------------
#: GELU's 1/sqrt(2): x * 0.5 * (1 + erf(x / sqrt(2))) is the pattern onnxruntime fuses into one Gelu
SQRT2 = math.sqrt(2.0)


def _act(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    assert isinstance(a, ActAttrs)
    x, b = node.inputs[0], em.b
    if a.kind in _UNARY:
        op, attrs = _UNARY[a.kind]
        return b.node(op, [x], **attrs), node.epilogue
    if a.kind == "leaky_relu":
        return b.node("LeakyRelu", [x], alpha=float(a.alpha)), node.epilogue
    if a.kind == "prelu":  # slopes (C,) -> (C, 1, ..., 1): PRelu broadcasts them from the right
        slopes = em.src.array(node.weights[0])
        shape = (-1, *([1] * (len(node.in_shapes[0]) - 2))) if slopes.size > 1 else (1,)
        return b.node("PRelu", [x, em.src.get(node.weights[0], shape)]), node.epilogue
    if a.kind == "silu":  # x * sigmoid(x)
        return b.node("Mul", [x, b.node("Sigmoid", [x])]), node.epilogue
    if a.kind == "gelu":  # exact: x * 0.5 * (1 + erf(x / sqrt(2)))
        e = b.node("Erf", [b.node("Div", [x, b.scalar(SQRT2)])])
        y = b.node("Mul", [x, b.node("Add", [e, b.scalar(1.0)])])
        return b.node("Mul", [y, b.scalar(0.5)]), node.epilogue
    raise CEPDError(f"{node.name}: the onnx target has no activation {a.kind!r}")


#: activations that are one standard op (torch's hardsigmoid is clamp(x / 6 + 1/2, 0, 1))
_UNARY: dict[str, tuple[str, dict]] = {
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "hardsigmoid": ("HardSigmoid", dict(alpha=1.0 / 6.0, beta=0.5)),
    "hardswish": ("HardSwish", {}),
}


def _slice(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    a = node.attrs
    assert isinstance(a, SliceAttrs)
    b = em.b
    y = b.node("Slice", [node.inputs[0], b.ints([a.start]), b.ints([a.stop]), b.ints([1])])
    return y, node.epilogue


def _pad(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    assert isinstance(node.attrs, PadAttrs)
    top, bottom, left, right = node.attrs.pads
    pads = em.b.ints([0, 0, top, left, 0, 0, bottom, right])
    return em.b.node("Pad", [node.inputs[0], pads]), node.epilogue


def nearest_index(size: int, out: int) -> np.ndarray:
    """torch's nearest source index of each of ``out`` outputs along an axis of ``size`` (torch
    computes floor(dst * (size / out)) in float32, so ask torch itself)."""
    import torch
    import torch.nn.functional as F

    src = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    return F.interpolate(src, size=out, mode="nearest").view(-1).numpy().astype(np.int64)


def ort_nearest_index(size: int, out: int) -> np.ndarray:
    """onnxruntime's source index for Resize nearest (asymmetric, floor) given ``sizes``: it
    divides dst by the float32 scale out / size (checked against onnxruntime in the tests)."""
    scale = np.float32(out) / np.float32(size)
    return np.minimum(np.floor(np.arange(out, dtype=np.float32) / scale).astype(np.int64), size - 1)


def _resize(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    """Resize; nearest along an axis where onnxruntime rounds a source index differently from
    torch (about 4% of size pairs, e.g. 14 -> 2) is a 0/1 selection MatMul along that axis."""
    a = node.attrs
    assert isinstance(a, ResizeAttrs)
    b, x = em.b, node.inputs[0]
    n, c, h, w = node.in_shapes[0]
    if a.mode == "bilinear":  # torch's half-pixel source clamps at 0 like onnxruntime's; size 1 -> centre
        mode = "align_corners" if a.align_corners else "half_pixel"
        y = b.node("Resize", [x, "", "", b.ints([n, c, *a.size])], mode="linear",
                   coordinate_transformation_mode=mode)  # fmt: skip
        return y, node.epilogue
    index = [nearest_index(i, o) for i, o in zip((h, w), a.size)]
    exact = [np.array_equal(k, ort_nearest_index(i, o)) for k, i, o in zip(index, (h, w), a.size)]
    size = [o if ok else i for ok, i, o in zip(exact, (h, w), a.size)]
    if size != [h, w]:
        x = b.node("Resize", [x, "", "", b.ints([n, c, *size])], mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip
    for axis, (ok, k, i) in enumerate(zip(exact, index, (h, w))):
        if ok:
            continue
        select = np.zeros((i, len(k)), np.float32)
        select[k, np.arange(len(k))] = 1.0
        if axis == 0:  # (H', H) @ (N, C, H, W')
            x = b.node("MatMul", [b.const(f"{node.name}.rows", select.T), x])
        else:  # (N, C, H', W) @ (W, W')
            x = b.node("MatMul", [x, b.const(f"{node.name}.cols", select)])
    return (b.node("Identity", [x]) if x == node.inputs[0] else x), node.epilogue


def _layernorm(em: Emitter, node: Node) -> tuple[str, Epilogue]:
    """LayerNormalization over the last axis: (N, C) as it is, (N, C, H, W) transposed to NHWC
    and back (onnxruntime runs that faster than the ReduceMean form and exactly)."""
    assert isinstance(node.attrs, NormAttrs)
    b, x = em.b, node.inputs[0]
    scale, shift = (em.src.get(k, (-1,)) for k in node.weights)
    eps = float(node.attrs.eps)
    if len(node.in_shapes[0]) == 2:
        return b.node("LayerNormalization", [x, scale, shift], axis=-1, epsilon=eps), node.epilogue
    t = b.node("Transpose", [x], perm=[0, 2, 3, 1])
    t = b.node("LayerNormalization", [t, scale, shift], axis=-1, epsilon=eps)
    return b.node("Transpose", [t], perm=[0, 3, 1, 2]), node.epilogue


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
    Op.ACT: _act,
    Op.MUL: _simple("Mul"),
    Op.SLICE: _slice,
    Op.PAD: _pad,
    Op.RESIZE: _resize,
    Op.LAYERNORM: _layernorm,
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
