"""Shared builders for the ONNX target tests (no tests here): single CEPD layers, random weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.model.layers import CEPDConv2d


class OneLayer(nn.Module):
    """A CEPD conv, optionally followed by BN, a residual add and ReLU/ReLU6."""

    def __init__(self, layer: CEPDConv2d, bn: bool, residual: bool, act: str | None) -> None:
        super().__init__()
        self.layer = layer
        self.bn = nn.BatchNorm2d(layer.out_channels) if bn else nn.Identity()
        self.residual, self.act = residual, act

    def forward(self, x):
        y = self.bn(self.layer(x))
        if self.residual:
            y = y + x
        if self.act == "relu":
            y = F.relu(y)
        elif self.act == "relu6":
            y = F.relu6(y)
        return y


def random_layer(cin, cout, kernel, *, ranks_frac=(0.5,), kappa=0, layout="o-k-i", stride=1,
                 padding=0, bias=True, seed=0) -> CEPDConv2d:  # fmt: skip
    """A CEPDConv2d with random cores, S filters and indices (ranks as fractions of the maximum)."""
    from cepd_deploy.tt import TTLayout

    lay = TTLayout.parse(layout, cout, cin, kernel)
    fr = list(ranks_frac) + [ranks_frac[-1]] * len(lay.max_ranks)
    ranks = tuple(max(1, round(m * f)) for m, f in zip(lay.max_ranks, fr))
    layer = CEPDConv2d(cin, cout, kernel, ranks=ranks, kappa=kappa, layout=layout, stride=stride,
                       padding=padding, bias=bias)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in layer.cores:
            c.copy_(torch.randn(c.shape, generator=g) / max(1, c.shape[0]) ** 0.5)
        layer.s_weight.copy_(torch.randn(layer.s_weight.shape, generator=g) * 0.1)
        layer.s_index.copy_(torch.sort(torch.randperm(cout, generator=g)[:kappa]).values)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(cout, generator=g))
    return layer


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()
