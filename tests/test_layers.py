"""CEPDConv2d: forward (TT chain in the Plan's order + sparse branch) == dense conv of L + S."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.model.layers import CEPDConv2d, select_filters
from cepd_deploy.tt import TTLayout, reconstruct

LAYOUTS = ["o-k-i", "eq9", "oo-k-ii", "o1|o2|o3|k|i1|i2|i3", "i|k|o", "k|o|i"]


@settings(max_examples=40, deadline=None)
@given(
    o=st.sampled_from([1, 2, 7, 12, 16, 30]),
    i=st.sampled_from([1, 3, 5, 8, 13, 24]),
    kernel=st.sampled_from([(1, 1), (3, 3), (1, 3), (5, 2), (7, 7)]),
    stride=st.sampled_from([1, 2]),
    pad=st.sampled_from([0, 1]),
    dilation=st.sampled_from([1, 2]),
    layout=st.sampled_from(LAYOUTS),
    rank_scale=st.floats(0.05, 1.0),
    kappa_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_forward_matches_reconstructed_dense(o, i, kernel, stride, pad, dilation, layout, rank_scale,
                                             kappa_frac, seed):  # fmt: skip
    torch.manual_seed(seed)
    conv = nn.Conv2d(i, o, kernel, stride=stride, padding=pad, dilation=dilation, bias=seed % 2 == 0)
    lay = TTLayout.parse(layout, o, i, kernel)
    ranks = tuple(max(1, round(rank_scale * m)) for m in lay.max_ranks)
    kappa = round(kappa_frac * o)
    layer = CEPDConv2d.from_conv(conv, ranks=ranks, kappa=kappa, layout=layout)
    x = torch.randn(2, i, 11 + dilation * kernel[0], 9 + dilation * kernel[1])
    with torch.no_grad():
        y, ref = layer(x), layer.dense_forward(x)
    assert y.shape == ref.shape
    assert float((y - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-6


def test_reconstruct_is_l_plus_s_and_full_rank_is_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    full = CEPDConv2d.from_conv(conv, ranks=(10**6, 10**6), kappa=0)
    assert torch.allclose(full.reconstruct(), conv.weight, atol=1e-5)
    layer = CEPDConv2d.from_conv(conv, ranks=(3, 3), kappa=4)
    l_only = reconstruct(list(layer.cores), layer.layout)
    s = torch.zeros_like(l_only)
    s[layer.s_index] = layer.s_weight
    assert torch.allclose(layer.reconstruct(), l_only + s)
    # S holds the residual's kappa filters with the largest l1 norm
    residual = conv.weight - l_only
    assert layer.s_index.tolist() == select_filters(residual, 4).tolist()
    assert torch.allclose(layer.s_weight, residual[layer.s_index], atol=1e-6)


def test_gradients_reach_cores_and_filters():
    layer = CEPDConv2d.from_conv(nn.Conv2d(6, 10, 3, padding=1), ranks=(4, 4), kappa=2)
    layer(torch.randn(2, 6, 8, 8)).square().sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in layer.cores)
    assert layer.s_weight.grad.abs().sum() > 0 and layer.bias.grad is not None


def test_refusals():
    with pytest.raises(CEPDError, match="groups"):
        CEPDConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), ranks=(2, 2))
    with pytest.raises(CEPDError, match="kappa"):
        CEPDConv2d(4, 4, 3, ranks=(2, 2), kappa=5)
    with pytest.raises(CEPDError, match="ranks must be >= 1"):
        CEPDConv2d(4, 4, 3, ranks=(0, 2))


def test_meta_round_trip():
    layer = CEPDConv2d(12, 10, (3, 1), ranks=(3, 4, 2, 2), kappa=2, layout="oo-k-ii", stride=2,
                       padding=(1, 0))
    again = CEPDConv2d.from_meta(layer.meta())
    assert again.meta() == layer.meta()
    assert [tuple(c.shape) for c in again.cores] == [tuple(c.shape) for c in layer.cores]
