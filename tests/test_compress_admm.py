"""ADMM state and projections, the split/compact model conversions, batched TT truncation."""

from __future__ import annotations

import math

import pytest
import torch
from compress_helpers import Tiny
from torch import nn

from cepd_deploy.compress.admm import (
    ADMM,
    Penalty,
    SplitConv2d,
    cepd_structure,
    filter_project,
    layer_specs,
    spec_of,
    to_cepd,
    to_split,
)
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.tt import TTLayout, relative_error, truncate, truncate_batch

SHAPE = (1, 3, 16, 16)


@pytest.fixture
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


def _specs(model):
    return layer_specs(model, params_remaining=0.5, sparsity=0.75, input_shape=SHAPE)


def _tt_rank_ok(w: torch.Tensor, meta: dict) -> bool:
    """A tensor meets its TT-rank constraint iff truncating it changes nothing."""
    spec = spec_of(meta)
    return relative_error(w, truncate(w.double(), spec.layout, spec.ranks).float()) < 1e-5


def test_filter_project_keeps_the_largest_l1_filters():
    w = torch.zeros(5, 2, 1, 1)
    w[:, 0, 0, 0] = torch.tensor([1.0, -4.0, 2.0, 0.5, 3.0])
    got = filter_project(w, 2)
    assert torch.equal(got[[1, 4]], w[[1, 4]])
    assert got[[0, 2, 3]].abs().sum() == 0
    assert filter_project(w, 0).abs().sum() == 0


def test_penalty_schedule():
    p = Penalty(0.1, 2.0, 0.5)
    assert [p.at(e) for e in range(4)] == [0.1, 0.2, 0.4, 0.5]
    assert Penalty(0.3, 1.0, 9.0).at(7) == 0.3


def test_layer_specs_are_converts_allocation(tiny):
    metas, direct = _specs(tiny)
    assert set(metas) == {"conv2", "conv3"}  # the first conv stays dense, as in convert
    for name, meta in metas.items():
        layer = direct.get_submodule(name)
        assert isinstance(layer, CEPDConv2d) and layer.meta() == meta


def test_layer_specs_from_a_rank_config(tiny):
    cfg = {"layers": {"conv3": {"ranks": [3, 4], "kappa": 2}}}
    metas, _ = layer_specs(tiny, config=cfg, input_shape=SHAPE)
    assert list(metas) == ["conv3"]
    assert (metas["conv3"]["ranks"], metas["conv3"]["kappa"]) == ([3, 4], 2)


def test_split_starts_at_w_with_l_feasible(tiny):
    metas, _ = _specs(tiny)
    split = to_split(tiny, metas)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(split(x), tiny(x), rtol=1e-5, atol=1e-5)
    for name, meta in metas.items():
        m = split.get_submodule(name)
        assert isinstance(m, SplitConv2d)
        assert _tt_rank_ok(m.low.detach(), meta)
        torch.testing.assert_close(m.low + m.sparse, tiny.get_submodule(name).weight)


def test_projection_round_meets_constraints_and_updates_duals(tiny):
    metas, _ = _specs(tiny)
    split = to_split(tiny, metas)
    admm = ADMM(split, metas)
    with torch.no_grad():
        for m in admm.layers:  # move L and S off the constraint sets
            m.low.add_(torch.randn_like(m.low) * 0.1)
            m.sparse.add_(torch.randn_like(m.sparse) * 0.1)
    before = [(m.low.detach().clone(), m.sparse.detach().clone()) for m in admm.layers]
    admm.project()
    for name, lh, sh, u, v, (low, sparse) in zip(admm.names, admm.low_hat, admm.sparse_hat, admm.u,
                                                 admm.v, before):  # fmt: skip
        assert _tt_rank_ok(lh, metas[name])
        assert int((sh.flatten(1).abs().sum(1) > 0).sum()) <= metas[name]["kappa"]
        torch.testing.assert_close(u, low - lh)  # U started at 0: U = L - L^
        torch.testing.assert_close(v, sparse - sh)
    res_l, res_s = admm.residuals()
    want_l = math.sqrt(sum(float((m.low.detach() - h).pow(2).sum())
                           for m, h in zip(admm.layers, admm.low_hat)))  # fmt: skip
    assert res_l == pytest.approx(want_l) and res_s > 0


def test_prox_step_minimises_the_penalised_objective(tiny):
    """After prox(c): x = argmin 1/(2c) ||x - p||^2 + 1/2 ||x - (x^ - dual)||^2 for L and S."""
    metas, _ = _specs(tiny)
    split = to_split(tiny, metas)
    admm = ADMM(split, metas)
    with torch.no_grad():
        for m in admm.layers:
            m.low.add_(torch.randn_like(m.low) * 0.1)
    admm.project()
    before = [(m.low.detach().clone(), m.sparse.detach().clone()) for m in admm.layers]
    c = 0.3
    pen_before = admm.penalty(1.0)
    admm.prox(c)
    for m, lh, sh, u, v, (low, sparse) in zip(admm.layers, admm.low_hat, admm.sparse_hat, admm.u,
                                               admm.v, before):  # fmt: skip
        for x, p, hat, dual in ((m.low.detach(), low, lh, u), (m.sparse.detach(), sparse, sh, v)):
            stationarity = (x - p) / c + (x - hat + dual)
            assert float(stationarity.abs().max()) < 1e-5
    assert admm.penalty(1.0) == pytest.approx(pen_before / (1 + c) ** 2, rel=1e-4)


def test_admm_state_roundtrip(tiny):
    metas, _ = _specs(tiny)
    split = to_split(tiny, metas)
    a = ADMM(split, metas)
    a.project()
    b = ADMM(split, metas)
    b.load_state_dict(a.state_dict())
    for key in ("u", "v", "low_hat", "sparse_hat"):
        assert all(torch.equal(x, y) for x, y in zip(getattr(a, key), getattr(b, key)))


def test_to_cepd_is_the_hard_projection_of_l_and_s(tiny):
    metas, _ = _specs(tiny)
    split = to_split(tiny, metas)
    with torch.no_grad():
        for name in metas:
            m = split.get_submodule(name)
            m.low.add_(torch.randn_like(m.low) * 0.1)
            m.sparse.add_(torch.randn_like(m.sparse) * 0.1)
    cepd = to_cepd(split, metas)
    for name, meta in metas.items():
        m, layer = split.get_submodule(name), cepd.get_submodule(name)
        assert isinstance(layer, CEPDConv2d) and layer.meta() == meta
        spec = layer.spec
        want = truncate(m.low.detach().double(), spec.layout, spec.ranks).float()
        want = want + filter_project(m.sparse.detach(), spec.kappa)
        torch.testing.assert_close(layer.reconstruct(), want, rtol=1e-4, atol=1e-5)
    # the empty structure takes the compact model's state exactly
    empty = cepd_structure(tiny, metas)
    empty.load_state_dict(cepd.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(empty.eval()(x), cepd.eval()(x))


# -- the optimised batched truncation (tt.truncate_batch) ------------------------------------
CASES = [
    ("o-k-i", (24, 16, 3, 3), (5, 7)),
    ("o-k-i", (16, 40, 1, 1), (6, 6)),  # 1x1: the second bond keeps everything
    ("o-k-i", (64, 8, 3, 3), (20, 8)),  # a bond with more rows than columns
    ("eq9", (12, 10, 3, 3), (4, 9)),
    ("oo-k-ii", (12, 10, 3, 3), (2, 5, 6, 3)),
    ("o1|o2|o3|k|i1|i2|i3", (12, 8, 1, 3), (2, 3, 4, 5, 3, 2)),
]


@pytest.mark.parametrize("spec,shape,ranks", CASES)
def test_truncate_batch_matches_svd_truncation(spec, shape, ranks):
    torch.manual_seed(1)
    ws = [torch.randn(*shape, dtype=torch.float64) for _ in range(2)]
    lay = TTLayout.parse(spec, shape[0], shape[1], shape[2:])
    got = truncate_batch(ws, [lay, lay], [ranks, ranks])
    for w, g in zip(ws, got):
        want = truncate(w, lay, ranks)
        assert float((g - want).abs().max()) < 1e-9 * float(want.abs().max())


def test_truncate_batch_rank_deficient_and_zero():
    torch.manual_seed(2)
    lay = TTLayout.parse("o-k-i", 32, 8, (3, 3))
    low_rank = torch.randn(32, 3, dtype=torch.float64) @ torch.randn(3, 72, dtype=torch.float64)
    w = low_rank.reshape(32, 8, 3, 3)
    got = truncate_batch([w, torch.zeros_like(w)], [lay, lay], [(10, 8), (10, 8)])
    assert relative_error(w, got[0]) < 1e-10  # rank 3 < 10: kept exactly, no blow-up
    assert got[1].abs().max() == 0
    assert torch.isfinite(got[0]).all()
