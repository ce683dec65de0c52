"""tt.py: layouts, TT-SVD, truncation, reconstruction, rank bounds, factorisation choice."""

from __future__ import annotations

import math

import pytest
import torch

from cepd_deploy.errors import CEPDError
from cepd_deploy.tt import (
    TTLayout,
    balanced_factors,
    choose_factorisation,
    factorisations,
    reconstruct,
    relative_error,
    truncate,
    truncate_batch,
    tt_svd,
)

LAYOUTS = [
    ("o-k-i", 12, 10, (3, 3)),
    ("eq9", 12, 10, (3, 3)),
    ("oo-k-ii", 12, 10, (3, 3)),
    ("o1|o2|o3|k|i1|i2|i3", 12, 8, (1, 3)),
    ("o-k-i", 7, 13, (5, 5)),  # primes
    ("oo-k-ii", 7, 13, (1, 1)),  # prime channels split with a factor of 1
]


@pytest.mark.parametrize("spec,o,i,k", LAYOUTS)
def test_full_rank_recovers_exactly(spec, o, i, k):
    torch.manual_seed(0)
    w = torch.randn(o, i, *k, dtype=torch.float64)
    lay = TTLayout.parse(spec, o, i, k)
    cores = tt_svd(w, lay, lay.max_ranks)
    assert relative_error(w, reconstruct(cores, lay)) < 1e-12
    r = (1, *lay.max_ranks, 1)
    assert [tuple(c.shape) for c in cores] == [(r[j], n, r[j + 1]) for j, n in enumerate(lay.core_sizes)]


@pytest.mark.parametrize("spec,o,i,k", LAYOUTS[:4])
def test_error_non_increasing_in_rank(spec, o, i, k):
    torch.manual_seed(1)
    w = torch.randn(o, i, *k, dtype=torch.float64)
    lay = TTLayout.parse(spec, o, i, k)
    errors = []
    for s in (0.1, 0.25, 0.5, 0.75, 1.0):
        ranks = tuple(max(1, math.ceil(s * m)) for m in lay.max_ranks)
        errors.append(relative_error(w, truncate(w, lay, ranks)))
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-12 < errors[0]


def test_two_core_truncation_is_optimal_svd():
    """For two cores O | (K*K, I) the TT truncation is the Eckart-Young optimum."""
    torch.manual_seed(2)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    lay = TTLayout.parse("o|k,i", 16, 8, (3, 3))
    s = torch.linalg.svdvals(w.reshape(16, -1))
    for r in (1, 3, 7, 16):
        best = float(torch.sqrt((s[r:] ** 2).sum()) / torch.linalg.vector_norm(w))
        assert relative_error(w, truncate(w, lay, (r,))) == pytest.approx(best, abs=1e-10)


def test_ranks_above_the_bound_change_nothing():
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    lay = TTLayout.parse("o-k-i", 6, 4, (3, 3))
    assert lay.max_ranks == (6, 4)  # min(6, 9*4) and min(6*9, 4)
    assert lay.clip_ranks((100, 100)) == (6, 4)
    assert torch.allclose(truncate(w, lay, (100, 100)), truncate(w, lay, (6, 4)))


def test_batched_truncation_matches_single():
    torch.manual_seed(3)
    ws = [torch.randn(16, 8, 3, 3) for _ in range(3)] + [torch.randn(8, 16, 1, 1)]
    lays = [TTLayout.parse("o-k-i", *w.shape[:2], tuple(w.shape[2:])) for w in ws]
    ranks = [(4, 5), (4, 5), (2, 3), (3, 3)]
    for w, lay, r, got in zip(ws, lays, ranks, truncate_batch(ws, lays, ranks)):
        assert torch.allclose(got, truncate(w, lay, r), atol=1e-5)


def test_factorisations_and_balance():
    assert balanced_factors(256, 2) == (16, 16)
    assert balanced_factors(17, 2) in ((17, 1), (1, 17))
    assert sorted(factorisations(12, 2)) == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]
    assert all(math.prod(f) == 36 for f in factorisations(36, 3))


def test_layout_errors():
    with pytest.raises(CEPDError, match="unknown TT mode"):
        TTLayout.parse("o|x|i", 4, 4, (3, 3))
    with pytest.raises(CEPDError, match="exactly once"):
        TTLayout.parse("o|i", 4, 4, (3, 3))
    with pytest.raises(CEPDError, match="do not multiply"):
        TTLayout.parse("o-k-i", 4, 4, (3, 3), o_factors=(3,))
    with pytest.raises(CEPDError, match="bonds"):
        TTLayout.parse("o-k-i", 4, 4, (3, 3)).clip_ranks((2,))


def test_choose_factorisation_minimises_the_cost():
    def cost(lay, ranks):
        return lay.params(ranks)

    best = choose_factorisation(24, 12, (3, 3), "oo-k-ii", (4, 4, 4, 4), cost)
    every = [
        TTLayout.parse("oo-k-ii", 24, 12, (3, 3), fo, fi)
        for fo in factorisations(24, 2)
        for fi in factorisations(12, 2)
    ]
    ranks = (4, 4, 4, 4)
    assert cost(best, best.clip_ranks(ranks)) == min(cost(x, x.clip_ranks(ranks)) for x in every)


def test_preset_names():
    assert TTLayout.parse("o|k|i", 8, 8, (3, 3)).name == "o-k-i"
    assert TTLayout.parse("eq9", 8, 8, (3, 3)).name == "eq9"
    assert TTLayout.parse("o1|k|i1,i2", 8, 8, (3, 3)).name == "o1|k|i1,i2"
