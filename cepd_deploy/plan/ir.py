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
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

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


#: Ops that contract with a weight tensor (``weights[0]``) and may carry a bias.
WEIGHTED = frozenset({Op.CONV, Op.MATMUL, Op.LINEAR})
#: Ops that may carry an :class:`Epilogue`.
EPILOGUE_OPS = frozenset(
    {Op.CONV, Op.MATMUL, Op.LINEAR, Op.AFFINE, Op.SCATTER_ADD, Op.ADD, Op.PERMUTE}
)


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
    attrs: dict = field(default_factory=dict)
    epilogue: Epilogue = Epilogue()
    layer: str = ""  # the source module this op came from (several ops share a CEPD layer)

    @property
    def data_inputs(self) -> tuple[str, ...]:
        """Inputs without the residual operand of the epilogue."""
        return self.inputs[:-1] if self.epilogue.residual else self.inputs

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)


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

    @property
    def macs(self) -> int:
        from cepd_deploy.plan.cost import plan_macs

        return plan_macs(self)

    @property
    def params(self) -> int:
        from cepd_deploy.plan.cost import plan_params

        return plan_params(self)

    def layer_nodes(self, layer: str) -> list[Node]:
        return [n for n in self.nodes if n.layer == layer]

    def summary(self) -> str:
        from cepd_deploy.plan.report import summary

        return summary(self)
