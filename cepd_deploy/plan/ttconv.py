"""Lowering of one CEPD conv (TT chain + filter-sparse branch) to Plan nodes and their weights.

Used by the whole-model lowering and by ``CEPDConv2d.forward`` itself, so the layer runs exactly
the ops the Plan describes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from cepd_deploy.plan.contraction import (
    DENSE,
    Path,
    core_labels,
    enumerate_paths,
    label_sizes,
    step_dims,
    step_weight,
)
from cepd_deploy.plan.ir import (
    ConvAttrs,
    Epilogue,
    MatmulAttrs,
    Node,
    Op,
    PermuteAttrs,
    PoolAttrs,
    Role,
    ScatterAttrs,
    conv_out_hw,
)
from cepd_deploy.tt import TTLayout, tt_full

CostFn = Callable[[Sequence[Node]], float]


@dataclass(frozen=True)
class TTConvSpec:
    """Everything static about a CEPD conv."""

    layout: TTLayout
    ranks: tuple[int, ...]
    kappa: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def subsamples(self) -> bool:
        """A strided 1x1 conv without padding: subsample first, then everything runs small."""
        return (
            self.layout.kernel == (1, 1) and self.padding == (0, 0) and self.stride != (1, 1)
        )

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return conv_out_hw((h, w), self.layout.kernel, self.stride, self.padding, self.dilation)


def lower_ttconv(
    spec: TTConvSpec,
    name: str,
    x: str,
    in_shape: tuple[int, ...],
    path: Path | str,
    *,
    scale: bool = False,
    bias: bool = False,
    index: Sequence[int] | None = None,
) -> list[Node]:
    """Nodes of one CEPD conv for one contraction path (or ``"dense"``).

    ``scale``/``bias``: whether the layer's last op carries a per-channel scale/bias epilogue
    (consts ``{name}.scale`` / ``{name}.bias``).
    """
    lay = spec.layout
    n, _, h, w = in_shape
    ho, wo = spec.out_hw(h, w)
    out_shape = (n, lay.out_channels, ho, wo)
    epi = Epilogue(scale=f"{name}.scale" if scale else None, bias=f"{name}.bias" if bias else None)
    conv = ConvAttrs(lay.kernel, spec.stride, spec.padding, spec.dilation, 1, 1, lay.in_channels,
                     lay.out_channels)  # fmt: skip
    if path == DENSE:
        return [Node(Op.CONV, f"{name}.conv", (x,), f"{name}.out", (in_shape,), out_shape,
                     (f"{name}.w",), conv, epi, name)]  # fmt: skip
    assert isinstance(path, Path)
    nodes: list[Node] = []
    sizes = label_sizes(lay, spec.ranks)
    cur, cur_shape, stride = x, in_shape, spec.stride
    if spec.subsamples:
        cur_shape = (n, lay.in_channels, ho, wo)
        nodes.append(Node(Op.MAXPOOL, f"{name}.sub", (x,), f"{name}.sub", (in_shape,), cur_shape,
                          attrs=PoolAttrs((1, 1), stride), layer=name, role=Role.SUBSAMPLE))  # fmt: skip
        cur, stride = f"{name}.sub", (1, 1)
    x_branch, x_branch_shape = cur, cur_shape
    for k, step in enumerate(path.steps):
        hw = cur_shape[2:]
        if step.perm is not None:
            cur = _permute(nodes, f"{name}.p{k}", cur, cur_shape, step.before, step.perm, sizes, name)
        outer, cin, cout, inner = step_dims(step, sizes)
        if step.conv:
            attrs = replace(conv, stride=stride, outer=outer, cin=cin, cout=cout)
            hw = conv_out_hw(hw, lay.kernel, stride, spec.padding, spec.dilation)
            op = Op.CONV
        else:
            attrs = MatmulAttrs(cin, cout, outer, inner)
            op = Op.MATMUL
        shape = (n, math.prod(sizes[x] for x in step.after), *hw)
        out = f"{name}.t{k}"
        nodes.append(Node(op, out, (cur,), out, (cur_shape,), shape, (f"{name}.t{k}.w",), attrs,
                          layer=name, role=Role.STEP))  # fmt: skip
        cur, cur_shape = out, shape
    if path.final_perm is not None:
        target = tuple(path.final_before[src] for src in path.final_perm)
        cur = _permute(nodes, f"{name}.pf", cur, cur_shape, target, path.final_perm, sizes, name)
    if spec.kappa > 0:
        idx = tuple(int(i) for i in (range(spec.kappa) if index is None else index))
        s_attrs = replace(conv, stride=stride, cout=spec.kappa)
        s_shape = (n, spec.kappa, ho, wo)
        nodes.append(Node(Op.CONV, f"{name}.s", (x_branch,), f"{name}.s", (x_branch_shape,),
                          s_shape, (f"{name}.s.w",), s_attrs, layer=name, role=Role.SPARSE))  # fmt: skip
        nodes.append(Node(Op.SCATTER_ADD, f"{name}.scatter", (cur, f"{name}.s"), f"{name}.scatter",
                          (out_shape, s_shape), out_shape, (), ScatterAttrs(idx), layer=name,
                          role=Role.SCATTER))  # fmt: skip
    nodes[-1] = replace(nodes[-1], output=f"{name}.out", epilogue=epi)
    return nodes


def _permute(nodes, nm, cur, cur_shape, labels_after, perm, sizes, layer) -> str:
    """Append a PERMUTE that reorders the channel axes to ``labels_after`` (axis d <- ``perm[d]``)."""
    before = [None] * len(perm)
    for dst, src in enumerate(perm):
        before[src] = labels_after[dst]
    axes = tuple(sizes[x] for x in before)
    nodes.append(Node(Op.PERMUTE, nm, (cur,), nm, (cur_shape,), cur_shape,
                      attrs=PermuteAttrs(axes, tuple(perm)), layer=layer, role=Role.PERMUTE))  # fmt: skip
    return nm


def choose_path(
    spec: TTConvSpec, in_shape: tuple[int, ...], cost: CostFn, *, scale: bool = False
) -> Path | str:
    """The cheapest of every contraction order and the dense rebuild, by ``cost`` over nodes.

    Ties prefer fewer ops (fewer PERMUTEs), then the TT chain over the dense rebuild.
    """
    best = None
    for path in (*enumerate_paths(spec.layout), DENSE):
        nodes = lower_ttconv(spec, "_", "_x", in_shape, path, scale=scale)
        key = (cost(nodes), len(nodes), path == DENSE)
        if best is None or key < best[0]:
            best = (key, path)
    return best[1]


def ttconv_weights(
    spec: TTConvSpec,
    name: str,
    path: Path | str,
    cores: Sequence[torch.Tensor],
    s_weight: torch.Tensor,
    s_index: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    fold_scale: bool = False,
) -> dict[str, torch.Tensor]:
    """The weights of :func:`lower_ttconv`'s nodes, computed (differentiably) from the layer's
    cores and compact S. With ``fold_scale`` a per-output-channel ``scale`` (a folded BN) is
    multiplied into the weights; it must then be possible (see :func:`can_fold_scale`)."""
    lay = spec.layout
    cores = list(cores)
    if fold_scale and scale is not None and path != DENSE:
        cores = _scale_cores(lay, spec.ranks, cores, scale)
    s_w = s_weight
    if fold_scale and scale is not None:
        s_w = s_weight * scale[s_index].reshape(-1, 1, 1, 1)
    if path == DENSE:
        w = lay.from_cores_tensor(tt_full(cores))
        if spec.kappa:
            w = w.index_add(0, s_index, s_weight)
        if fold_scale and scale is not None:
            w = w * scale.reshape(-1, 1, 1, 1)
        return {f"{name}.w": w}
    sizes = label_sizes(lay, spec.ranks)
    out = {f"{name}.t{k}.w": step_weight(s, lay, cores[s.core], sizes) for k, s in enumerate(path.steps)}
    if spec.kappa:
        out[f"{name}.s.w"] = s_w
    return out


def can_fold_scale(layout: TTLayout) -> bool:
    """A per-output-channel scale folds into the cores when one core owns the only O mode."""
    return len(layout.o_factors) == 1


def _scale_cores(lay: TTLayout, ranks, cores: list[torch.Tensor], scale: torch.Tensor) -> list:
    c = next(j for j, core in enumerate(lay.cores) if "o1" in core)
    sizes = label_sizes(lay, ranks)
    labels = core_labels(lay, c)
    shape = [sizes[x] for x in labels]
    bshape = [sizes[x] if x == "o1" else 1 for x in labels]
    scaled = (cores[c].reshape(shape) * scale.reshape(bshape)).reshape(cores[c].shape)
    return cores[:c] + [scaled] + cores[c + 1 :]
