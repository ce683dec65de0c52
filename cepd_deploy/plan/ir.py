"""The Plan: a typed list of primitive ops with shapes. Every target consumes it.

Activations are NCHW (4-D) or NF (2-D) float tensors named by strings. Weights live in
``Plan.consts`` (numpy float32), also by name. Costs (MACs, params, bytes) are derived from
the nodes by :mod:`cepd_deploy.plan.cost`, never stored.

A TT contraction step works on a *folded view* of its input: a value of shape (N, C, H, W)
with C = outer * cin * inner is read as (N*outer, cin, inner*H*W) (``MATMUL``) or, with
inner = 1, as an (N*outer, cin, H, W) image (``CONV``). Folding is a free reshape, so a
chain over factored channel modes needs no data movement unless a ``PERMUTE`` says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def conv_out_hw(hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    """Output height and width of a (dilated, strided, zero-padded) window over an ``hw`` map."""
    return tuple(
        (hw[d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in (0, 1)
    )


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken`` (which gets it)."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


class Op(str, Enum):
    """The primitive op kinds of a Plan (each node's ``op``)."""

    # contractions with a weight: where the MACs are
    CONV = "conv"  # 2-D conv on an (N*outer, cin, H, W) view; groups, stride, padding, dilation
    MATMUL = "matmul"  # channel contraction on an (N*outer, cin, inner*H*W) view: W (cout, cin)
    LINEAR = "linear"  # fully connected (N, fin) -> (N, fout)
    # per-channel affine (a BatchNorm that could not be folded into a conv)
    AFFINE = "affine"
    # data movement
    PERMUTE = "permute"  # reorder the factored channel axes; attrs axes (sizes), perm
    SCATTER_ADD = "scatter_add"  # out = a; out[:, index] += b  (the sparse branch of a CEPD conv)
    CONCAT = "concat"  # along channels
    FLATTEN = "flatten"  # (N, C, H, W) -> (N, C*H*W)
    # elementwise
    ADD = "add"
    RELU = "relu"  # attrs max: None, or 6.0 for ReLU6
    # pooling
    MAXPOOL = "maxpool"  # attrs kernel, stride, padding (a 1x1 maxpool with stride subsamples)
    AVGPOOL = "avgpool"  # attrs kernel, stride, padding (count_include_pad=True)
    GLOBAL_AVGPOOL = "global_avgpool"  # (N, C, H, W) -> (N, C, 1, 1)
    # modern-network ops
    ACT = "act"  # elementwise activation other than ReLU: attrs kind (see ACTIVATIONS), alpha
    MUL = "mul"  # a * b; b has a's shape or (N, C, 1, 1) (broadcast over the image: squeeze-excitation)
    SLICE = "slice"  # channels [start, stop) (chunk, split, x[:, a:b])
    PAD = "pad"  # zero padding (top, bottom, left, right) of an (N, C, H, W) map
    RESIZE = "resize"  # to attrs size: nearest (floor) or bilinear (align_corners or half-pixel)
    LAYERNORM = "layernorm"  # normalise over channels at each position; weights scale, shift (C,)


#: Activations of ``Op.ACT`` (``kind``), with their torch definitions in plan/reference.py.
#: ``leaky_relu`` uses ``alpha`` as its negative slope; ``prelu`` reads per-channel slopes
#: (``weights[0]``, shape (C,)). ``gelu`` is the exact (erf) GELU.
ACTIVATIONS = ("sigmoid", "hardsigmoid", "silu", "hardswish", "gelu", "tanh", "leaky_relu", "prelu")

#: Ops that contract with a weight tensor (``weights[0]``) and may carry a bias.
WEIGHTED = frozenset({Op.CONV, Op.MATMUL, Op.LINEAR})
#: Ops that may carry an :class:`Epilogue`.
EPILOGUE_OPS = frozenset({Op.CONV, Op.MATMUL, Op.LINEAR, Op.AFFINE, Op.SCATTER_ADD, Op.ADD, Op.PERMUTE})


@dataclass(frozen=True)
class Epilogue:
    """What follows a compute op, in this order: y = y*scale + bias; y += residual; act(y).

    ``scale`` and ``bias`` name per-output-channel consts. With ``residual`` the op's last
    input is added. ``act`` is ``"relu"`` or ``"relu6"`` or ``None``.
    """

    scale: str | None = None
    bias: str | None = None
    residual: bool = False
    act: str | None = None

    @property
    def empty(self) -> bool:
        return self == Epilogue()


Pair = tuple[int, int]


# -- attributes: one frozen class per op kind, checked by verify -----------------------------
@dataclass(frozen=True)
class NoAttrs:
    """Ops without attributes (LINEAR, AFFINE, CONCAT, FLATTEN, ADD, MUL, GLOBAL_AVGPOOL)."""


@dataclass(frozen=True)
class ConvAttrs:
    """A 2-D conv on the (N*outer, cin, H, W) view of its input."""

    kernel: Pair
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    outer: int = 1
    cin: int = 0
    cout: int = 0


@dataclass(frozen=True)
class MatmulAttrs:
    """W (cout, cin) on the (N*outer, cin, inner*H*W) view of its input."""

    cin: int
    cout: int
    outer: int = 1
    inner: int = 1


@dataclass(frozen=True)
class PermuteAttrs:
    """The channel dim viewed as ``axes`` (sizes), reordered: output axis d <- input axis perm[d]."""

    axes: tuple[int, ...]
    perm: tuple[int, ...]


@dataclass(frozen=True)
class ScatterAttrs:
    """``out[:, index[j]] += b[:, j]``."""

    index: tuple[int, ...]


@dataclass(frozen=True)
class PoolAttrs:
    """A pooling window (average pools count the padding)."""

    kernel: Pair
    stride: Pair
    padding: Pair = (0, 0)
    ceil_mode: bool = False


@dataclass(frozen=True)
class ReluAttrs:
    """``max``: None, or 6.0 for ReLU6."""

    max: float | None = None


@dataclass(frozen=True)
class ActAttrs:
    """An activation of :data:`ACTIVATIONS`; ``alpha`` is leaky_relu's negative slope."""

    kind: str
    alpha: float = 0.0


@dataclass(frozen=True)
class SliceAttrs:
    """Channels ``[start, stop)`` of the input."""

    start: int
    stop: int


@dataclass(frozen=True)
class PadAttrs:
    """Zero padding of the image: (top, bottom, left, right) rows/columns."""

    pads: tuple[int, int, int, int]


@dataclass(frozen=True)
class ResizeAttrs:
    """Resize the image to ``size`` (H', W').

    ``nearest``: source pixel floor(dst * in / out) (torch's ``nearest``, ONNX asymmetric/floor);
    ``bilinear``: with ``align_corners`` corners map to corners, else half-pixel centres with
    source coordinates clamped at 0 (torch's ``bilinear``).
    """

    size: Pair
    mode: str = "nearest"
    align_corners: bool = False


@dataclass(frozen=True)
class NormAttrs:
    """Layer norm over the channel dim at each position: (x - mean) / sqrt(var + eps) * scale + shift."""

    eps: float = 1e-5


Attrs = (
    NoAttrs
    | ConvAttrs
    | MatmulAttrs
    | PermuteAttrs
    | ScatterAttrs
    | PoolAttrs
    | ReluAttrs
    | ActAttrs
    | SliceAttrs
    | PadAttrs
    | ResizeAttrs
    | NormAttrs
)

#: The attribute class of every op (verify checks it).
ATTRS: dict[Op, type] = {
    Op.CONV: ConvAttrs,
    Op.MATMUL: MatmulAttrs,
    Op.LINEAR: NoAttrs,
    Op.AFFINE: NoAttrs,
    Op.PERMUTE: PermuteAttrs,
    Op.SCATTER_ADD: ScatterAttrs,
    Op.CONCAT: NoAttrs,
    Op.FLATTEN: NoAttrs,
    Op.ADD: NoAttrs,
    Op.RELU: ReluAttrs,
    Op.MAXPOOL: PoolAttrs,
    Op.AVGPOOL: PoolAttrs,
    Op.GLOBAL_AVGPOOL: NoAttrs,
    Op.ACT: ActAttrs,
    Op.MUL: NoAttrs,
    Op.SLICE: SliceAttrs,
    Op.PAD: PadAttrs,
    Op.RESIZE: ResizeAttrs,
    Op.LAYERNORM: NormAttrs,
}


class Role(str, Enum):
    """A node's part in a CEPD layer's TT chain (set by the TT lowering; ``NONE`` for every other
    node, including a CEPD layer that the lowering rebuilt as one dense conv)."""

    NONE = ""
    SUBSAMPLE = "subsample"  # strided 1x1 layer: a 1x1 MAXPOOL picks the pixels first
    STEP = "step"  # one contraction of the TT chain (CONV or MATMUL)
    PERMUTE = "permute"  # reorders the chain's factored channel axes
    SPARSE = "sparse"  # the S branch: a compact conv with kappa output channels
    SCATTER = "scatter"  # adds the S branch into its output channels


@dataclass(frozen=True)
class Node:
    """One primitive op: ``output = op(*inputs; weights, attrs)`` then its epilogue."""

    op: Op
    name: str
    inputs: tuple[str, ...]
    output: str
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    weights: tuple[str, ...] = ()
    attrs: Attrs = NoAttrs()
    epilogue: Epilogue = Epilogue()
    layer: str = ""  # the source module this op came from (several ops share a CEPD layer)
    role: Role = Role.NONE

    @property
    def data_inputs(self) -> tuple[str, ...]:
        """Inputs without the residual operand of the epilogue."""
        return self.inputs[:-1] if self.epilogue.residual else self.inputs


@dataclass(frozen=True)
class CEPDBlock:
    """One CEPD layer over its primitive ops: y = epilogue(chain(x) + scatter(S(x))).

    A view of the nodes that carry the layer's name and a :class:`Role`; passes that rewrite
    the chain keep the roles, so the block always describes the Plan as it is.
    """

    layer: str
    nodes: tuple[Node, ...]  # in Plan order

    def _role(self, role: Role) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role is role)

    @property
    def subsample(self) -> Node | None:
        return next(iter(self._role(Role.SUBSAMPLE)), None)

    @property
    def steps(self) -> tuple[Node, ...]:
        """The chain's contractions (CONV/MATMUL) and permutes, in order."""
        return tuple(n for n in self.nodes if n.role in (Role.STEP, Role.PERMUTE))

    @property
    def sparse(self) -> Node | None:
        """The S branch's compact conv."""
        return next(iter(self._role(Role.SPARSE)), None)

    @property
    def scatter(self) -> Node | None:
        return next(iter(self._role(Role.SCATTER)), None)

    @property
    def index(self) -> tuple[int, ...]:
        """The output channels the S branch adds into."""
        return self.scatter.attrs.index if self.scatter is not None else ()

    @property
    def kappa(self) -> int:
        return len(self.index)

    @property
    def input(self) -> str:
        """The value the layer reads (before any subsampling)."""
        return self.nodes[0].inputs[0]

    @property
    def branch_input(self) -> str:
        """The value the chain and the S branch start from (the subsampled input, if any)."""
        sub = self.subsample
        return sub.output if sub is not None else self.input

    @property
    def last(self) -> Node:
        """The node that writes the layer's output and carries its epilogue."""
        return self.nodes[-1]

    @property
    def output(self) -> str:
        return self.last.output

    @property
    def epilogue(self) -> Epilogue:
        return self.last.epilogue

    @property
    def residual(self) -> str | None:
        return self.last.inputs[-1] if self.last.epilogue.residual else None

    @property
    def chain_output(self) -> str:
        """The TT chain's result (what the scatter adds into; the output without S)."""
        return self.scatter.inputs[0] if self.scatter is not None else self.output


@dataclass(frozen=True)
class LayerInfo:
    """What a source conv/linear layer was and how it was lowered (for reports and dense cost)."""

    name: str
    kind: str  # "cepd", "conv" or "linear"
    weight_shape: tuple[int, ...]  # the dense weight: (O, I/groups, kh, kw) or (O, I)
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    groups: int = 1
    layout: str = ""
    factors: str = ""
    ranks: tuple[int, ...] = ()
    kappa: int = 0
    path: str = ""  # the contraction order chosen, e.g. "i1>k>o1" or "dense"

    @property
    def dense_macs(self) -> int:
        """MACs of the original dense layer (weights x output positions)."""
        spatial = math.prod(self.out_shape[2:]) if len(self.out_shape) == 4 else 1
        return self.out_shape[0] * math.prod(self.weight_shape) * spatial

    @property
    def dense_params(self) -> int:
        return math.prod(self.weight_shape) + self.weight_shape[0]  # weights + (folded) bias


@dataclass
class Plan:
    """A whole network as primitive ops, in topological order."""

    input: str
    input_shape: tuple[int, ...]
    output: str
    nodes: list[Node]
    consts: dict[str, np.ndarray]
    layers: dict[str, LayerInfo] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.nodes[-1].out_shape if self.nodes else self.input_shape

    def layer_nodes(self, layer: str) -> list[Node]:
        return [n for n in self.nodes if n.layer == layer]

    def readers(self) -> Counter[str]:
        """How many node inputs (and the plan output) read each value."""
        count = Counter(x for n in self.nodes for x in n.inputs)
        count[self.output] += 1
        return count

    def producer(self) -> dict[str, Node]:
        """The node that writes each value."""
        return {n.output: n for n in self.nodes}

    def blocks(self) -> list[CEPDBlock]:
        """Every CEPD layer of the Plan, in order."""
        by_layer: dict[str, list[Node]] = {}
        for n in self.nodes:
            if n.role is not Role.NONE:
                by_layer.setdefault(n.layer, []).append(n)
        return [CEPDBlock(layer, tuple(nodes)) for layer, nodes in by_layer.items()]

    def block_of(self) -> dict[str, CEPDBlock]:
        """Node name -> the CEPD block it belongs to."""
        return {n.name: b for b in self.blocks() for n in b.nodes}
