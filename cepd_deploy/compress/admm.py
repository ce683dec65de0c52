"""ADMM with hard constraints: W = L + S, TT-ranks(L) <= r, at most kappa nonzero filters in S.

Per layer the state is L and S (trainable, inside :class:`SplitConv2d`), their projections L^
and S^, and the scaled duals U and V. One ADMM round (every ``project_every`` SGD steps):

    L^ <- TT-truncate(L + U)        S^ <- filter-project(S + V)
    U  <- U + L - L^                V  <- V + S - S^

and every SGD step minimises f(L, S) + lambda/2 (||L - L^ + U||^2 + ||S - S^ + V||^2): an SGD
step on f, then the exact proximal step of the quadratic penalty (forward-backward splitting).

>>> specs, direct = layer_specs(model, flops_remaining=0.5)        # doctest: +SKIP
>>> split = to_split(model, specs); admm = ADMM(split, specs)     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.convert import convert
from cepd_deploy.model.layers import CEPDConv2d, select_filters
from cepd_deploy.plan.ttconv import TTConvSpec
from cepd_deploy.tt import truncate_batch, tt_svd


class SplitConv2d(nn.Module):
    """A conv whose weight is the sum of two free dense tensors: ``low`` (L) and ``sparse`` (S)."""

    def __init__(self, conv: nn.Conv2d, low: torch.Tensor, sparse: torch.Tensor) -> None:
        super().__init__()
        # contiguous whatever the layout of ``low`` (a TT truncation is a permuted view): a run
        # resumed from a checkpoint has contiguous tensors, and a conv sums in an order that
        # depends on the weight's strides, so both runs must see the same memory layout
        self.low = nn.Parameter(low.detach().clone(memory_format=torch.contiguous_format))
        self.sparse = nn.Parameter(sparse.detach().clone(memory_format=torch.contiguous_format))
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.low + self.sparse, self.bias, self.stride, self.padding, self.dilation)


# -- per-layer constraints -------------------------------------------------------------------
def layer_specs(model: nn.Module, **convert_kwargs) -> tuple[dict[str, dict], nn.Module]:
    """The per-layer ranks/kappa/layout that :func:`cepd_deploy.convert` allocates for a target,
    as ``CEPDConv2d.meta()`` dicts (plain types, checkpointable), and the converted model itself
    (which is the direct method: TT-SVD of W, then the kappa largest filters of W - L)."""
    direct = convert(model, **convert_kwargs)
    metas = {n: m.meta() for n, m in direct.named_modules() if isinstance(m, CEPDConv2d)}
    return metas, direct


def spec_of(meta: dict) -> TTConvSpec:
    """The TTConvSpec (layout, ranks, kappa, stride, padding, dilation) of a ``CEPDConv2d.meta()`` dict."""
    return CEPDConv2d.from_meta(meta).spec


def filter_project(weight: torch.Tensor, kappa: int) -> torch.Tensor:
    """Keep the kappa output filters with the largest l1 norm, zero the rest."""
    out = torch.zeros_like(weight)
    if kappa > 0:
        index = select_filters(weight, kappa)
        out[index] = weight[index]
    return out


def to_split(model: nn.Module, metas: dict[str, dict]) -> nn.Module:
    """A copy of a dense model whose constrained convs are :class:`SplitConv2d` with
    L = TT-truncate(W) and S = W - L (so L + S = W and L already meets its constraint)."""
    model = copy.deepcopy(model)
    convs = {n: model.get_submodule(n) for n in metas}
    specs = [spec_of(metas[n]) for n in convs]
    weights = [c.weight.detach() for c in convs.values()]
    lows = truncate_batch(weights, [s.layout for s in specs], [s.ranks for s in specs])
    for (name, conv), low in zip(convs.items(), lows):
        _replace(model, name, SplitConv2d(conv, low, conv.weight.detach() - low))
    return model


def split_structure(model: nn.Module, metas: dict[str, dict]) -> nn.Module:
    """:func:`to_split` without the truncation (the tensors are overwritten by a checkpoint)."""
    model = copy.deepcopy(model)
    for name in metas:
        conv = model.get_submodule(name)
        _replace(model, name, SplitConv2d(conv, conv.weight.detach(), torch.zeros_like(conv.weight)))
    return model


def to_cepd(model: nn.Module, metas: dict[str, dict]) -> nn.Module:
    """The compact CEPD model: cores from the TT-SVD of each L, and the kappa filters of S with
    the largest l1 norm."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, meta in metas.items():
            split = model.get_submodule(name)
            layer = CEPDConv2d.from_meta(meta)
            spec = layer.spec
            for p, c in zip(layer.cores, tt_svd(split.low, spec.layout, spec.ranks)):
                p.copy_(c)
            index = select_filters(split.sparse, spec.kappa)
            layer.s_index.copy_(index)
            layer.s_weight.copy_(split.sparse[index])
            if layer.bias is not None and split.bias is not None:
                layer.bias.copy_(split.bias)
            _replace(model, name, layer)
    return model


def cepd_structure(model: nn.Module, metas: dict[str, dict]) -> nn.Module:
    """A dense model with its constrained convs replaced by empty CEPD layers (for loading)."""
    model = copy.deepcopy(model)
    for name, meta in metas.items():
        _replace(model, name, CEPDConv2d.from_meta(meta))
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


# -- the ADMM state --------------------------------------------------------------------------
@dataclass(frozen=True)
class Penalty:
    """lambda per epoch: ``start * growth**epoch``, capped at ``limit`` (growth 1: constant)."""

    start: float = 1.0
    growth: float = 1.5
    limit: float = 50.0

    def at(self, epoch: int) -> float:
        return min(self.limit, self.start * self.growth**epoch)


class ADMM:
    """L^, S^, U, V for every :class:`SplitConv2d` of a model, and the two projections."""

    def __init__(self, model: nn.Module, metas: dict[str, dict]) -> None:
        self.names = list(metas)
        self.layers: list[SplitConv2d] = [model.get_submodule(n) for n in self.names]
        specs = [spec_of(metas[n]) for n in self.names]
        self.layouts = [s.layout for s in specs]
        self.ranks = [s.ranks for s in specs]
        self.kappas = [s.kappa for s in specs]
        with torch.no_grad():
            self.u = [torch.zeros_like(m.low) for m in self.layers]
            self.v = [torch.zeros_like(m.sparse) for m in self.layers]
            self.low_hat = [m.low.detach().clone(memory_format=torch.contiguous_format) for m in self.layers]
            self.sparse_hat = [filter_project(m.sparse.detach(), k) for m, k in zip(self.layers, self.kappas)]

    @torch.no_grad()
    def project(self, broadcast=None) -> None:
        """One ADMM round: both projections, then the dual updates.

        ``broadcast(tensors)`` (distributed runs) replaces the projections by rank 0's, so every
        rank holds bit-identical L^ and S^ whatever its linear-algebra library does.
        """
        lows = [m.low.detach() + u for m, u in zip(self.layers, self.u)]
        self.low_hat = [t.contiguous() for t in truncate_batch(lows, self.layouts, self.ranks)]
        self.sparse_hat = [filter_project(m.sparse.detach() + v, k)
                           for m, v, k in zip(self.layers, self.v, self.kappas)]  # fmt: skip
        if broadcast is not None:
            broadcast(self.low_hat + self.sparse_hat)
        for m, u, v, lh, sh in zip(self.layers, self.u, self.v, self.low_hat, self.sparse_hat):
            u += m.low.detach() - lh
            v += m.sparse.detach() - sh

    @torch.no_grad()
    def prox(self, step: float) -> None:
        """The penalty's part of an SGD step, taken exactly (a proximal step of size ``step`` =
        lr x lambda): L <- (L + step (L^ - U)) / (1 + step), likewise S.

        Unlike adding lambda (L - L^ + U) to the gradient, this cannot overshoot for any step,
        and momentum does not carry the penalty (which made the duals oscillate).
        """
        if step <= 0:
            return
        for m, u, v, lh, sh in zip(self.layers, self.u, self.v, self.low_hat, self.sparse_hat):
            m.low.add_(lh - u, alpha=step).div_(1 + step)
            m.sparse.add_(sh - v, alpha=step).div_(1 + step)

    @torch.no_grad()
    def penalty(self, lam: float) -> float:
        total = 0.0
        for m, u, v, lh, sh in zip(self.layers, self.u, self.v, self.low_hat, self.sparse_hat):
            total += float((m.low - lh + u).pow(2).sum() + (m.sparse - sh + v).pow(2).sum())
        return lam / 2 * total

    @torch.no_grad()
    def residuals(self) -> tuple[float, float]:
        """(||L - L^||, ||S - S^||) over all layers (Frobenius): the constraint violations."""
        low = sum(float((m.low - h).pow(2).sum()) for m, h in zip(self.layers, self.low_hat))
        sparse = sum(float((m.sparse - h).pow(2).sum()) for m, h in zip(self.layers, self.sparse_hat))
        return math.sqrt(low), math.sqrt(sparse)

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor (for broadcasts and digests)."""
        return self.low_hat + self.sparse_hat + self.u + self.v

    def state_dict(self) -> dict:
        return {"names": list(self.names), "u": [t.clone() for t in self.u],
                "v": [t.clone() for t in self.v], "low_hat": [t.clone() for t in self.low_hat],
                "sparse_hat": [t.clone() for t in self.sparse_hat]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise CEPDError("checkpoint: the ADMM state is for other layers")
        for key in ("u", "v", "low_hat", "sparse_hat"):
            ours, theirs = getattr(self, key), state[key]
            if len(theirs) != len(ours) or any(
                not isinstance(t, torch.Tensor) or t.shape != o.shape or t.dtype != o.dtype
                for t, o in zip(theirs, ours)
            ):
                raise CEPDError(f"checkpoint: the ADMM state {key!r} does not fit the layers")
            setattr(self, key, [t.clone(memory_format=torch.contiguous_format) for t in theirs])
