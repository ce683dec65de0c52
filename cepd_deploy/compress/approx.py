"""Weight approximations for the analyses: the operational sequences of L and S, and the
flattened-matrix SVD / Tucker-2 / TT formats, each at a parameter budget.

* ``S(L)``: L = TT-truncate(W), then S = filter-project(W - L) (the direct method);
* ``L(S)``: S = filter-project(W), then L = TT-truncate(W - S);
* ``L+S``: L and S found together, by the paper's ADMM (hard constraints, both projections
  each round) applied to the approximation objective ||W - L - S||^2, started from zero.

All three use the same ranks and kappa, hence the same compression. Lists of layers are
processed together so each truncation round is one :func:`cepd_deploy.tt.truncate_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cepd_deploy.compress.admm import filter_project
from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.convert import kappa_for, rank_candidates
from cepd_deploy.tt import TTLayout, truncate_batch

SEQUENCES = ("L+S", "S(L)", "L(S)")
FORMATS = ("SVD", "Tucker", "TT")


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared difference of ``a`` and ``b``, computed in float64."""
    return float((a.double() - b.double()).pow(2).mean())


# -- rank choice at a budget -----------------------------------------------------------------
def largest_within(candidates: Sequence[tuple[int, ...]], cost, budget: float) -> tuple[int, ...] | None:
    """The last candidate (they grow) whose ``cost`` is within ``budget``; None if none is."""
    best = None
    for r in candidates:
        if cost(r) <= budget:
            best = r
    return best


def sequence_ranks(weight_shape, layout: str, ratio: float, sparsity: float):
    """(TTLayout, ranks, kappa) with params(L) + params(S) <= dense / ratio, or None."""
    o, i, kh, kw = weight_shape
    lay = TTLayout.parse(layout, o, i, (kh, kw))
    kappa = kappa_for(o, sparsity)
    budget = o * i * kh * kw / ratio - kappa * i * kh * kw
    ranks = largest_within(rank_candidates(lay.max_ranks), lay.params, budget)
    return None if ranks is None else (lay, ranks, kappa)


# -- the operational sequences ---------------------------------------------------------------
def sequences(
    weights: list[torch.Tensor],
    layouts: list[TTLayout],
    ranks: list[tuple[int, ...]],
    kappas: list[int],
    iters: int = 100,
    rho: float = 0.5,
    growth: float = 1.05,
) -> dict[str, list[torch.Tensor]]:
    """The L+S, S(L) and L(S) approximations (L + S) of every weight."""
    ws = [w.detach().double() for w in weights]

    def trunc(xs):
        return truncate_batch(xs, layouts, ranks)

    def proj(xs):
        return [filter_project(x, k) for x, k in zip(xs, kappas)]

    low = trunc(ws)
    s_of_l = [lo + s for lo, s in zip(low, proj([w - lo for w, lo in zip(ws, low)]))]
    sparse = proj(ws)
    l_of_s = [lo + s for lo, s in zip(trunc([w - s for w, s in zip(ws, sparse)]), sparse)]
    return {"L+S": joint(ws, trunc, proj, iters, rho, growth), "S(L)": s_of_l, "L(S)": l_of_s}


def joint(ws, trunc, proj, iters: int, rho: float, growth: float) -> list[torch.Tensor]:
    """L and S together: the paper's ADMM applied to f(L, S) = ||W - L - S||^2 / 2.

    The (L, S) step has a closed form: with A = L^ - U and B = S^ - V, L + S = (2W + rho(A + B))
    / (2 + rho) and L - S = A - B. It starts from zero (neither part first), rho grows by
    ``growth`` per round, and the best feasible L^ + S^ seen is kept.
    """
    zeros = [torch.zeros_like(w) for w in ws]
    low_hat, sparse_hat, u, v = list(zeros), list(zeros), list(zeros), list(zeros)
    best, err = list(zeros), [mse(w, z) for w, z in zip(ws, zeros)]
    for _ in range(iters):
        a = [lh - x for lh, x in zip(low_hat, u)]
        b = [sh - x for sh, x in zip(sparse_hat, v)]
        total = [(2 * w + rho * (p + q)) / (2 + rho) for w, p, q in zip(ws, a, b)]
        low = [(t + p - q) / 2 for t, p, q in zip(total, a, b)]
        sparse = [(t - p + q) / 2 for t, p, q in zip(total, a, b)]
        low_hat = trunc([x + y for x, y in zip(low, u)])
        sparse_hat = proj([x + y for x, y in zip(sparse, v)])
        u = [x + lo - lh for x, lo, lh in zip(u, low, low_hat)]
        v = [x + s - sh for x, s, sh in zip(v, sparse, sparse_hat)]
        for k, (w, lh, sh) in enumerate(zip(ws, low_hat, sparse_hat)):
            e = mse(w, lh + sh)
            if e < err[k]:
                best[k], err[k] = lh + sh, e
        rho *= growth
    return best


# -- formats at equal compression ------------------------------------------------------------
def svd_approx(w: torch.Tensor, budget: float) -> tuple[torch.Tensor, int] | None:
    """Rank-r SVD of the flattened (O, I*kh*kw) matrix, r(O + I*kh*kw) <= budget."""
    o = w.shape[0]
    mat = w.double().reshape(o, -1)
    r = min(int(budget // (o + mat.shape[1])), min(mat.shape))
    if r < 1:
        return None
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vh[:r]).reshape(w.shape).to(w.dtype), r * (o + mat.shape[1])


def _leading(mat: torch.Tensor, r: int) -> torch.Tensor:
    return torch.linalg.svd(mat, full_matrices=False).U[:, :r]


def tucker2_approx(w: torch.Tensor, budget: float, sweeps: int = 3) -> tuple[torch.Tensor, int] | None:
    """Tucker-2 on the O and I modes (HOSVD + ``sweeps`` HOOI sweeps), proportional ranks."""
    o, i, kh, kw = w.shape
    k2 = kh * kw

    def params(r):
        return o * r[0] + i * r[1] + r[0] * r[1] * k2

    ranks = largest_within(rank_candidates((o, i)), params, budget)
    if ranks is None:
        return None
    ro, ri = ranks
    x = w.double()
    uo = _leading(x.reshape(o, -1), ro)
    ui = _leading(x.transpose(0, 1).reshape(i, -1), ri)
    for _ in range(sweeps):
        uo = _leading(torch.einsum("oikl,is->oskl", x, ui).reshape(o, -1), ro)
        ui = _leading(torch.einsum("oikl,or->irkl", x, uo).reshape(i, -1), ri)
    core = torch.einsum("oikl,or,is->rskl", x, uo, ui)
    return torch.einsum("rskl,or,is->oikl", core, uo, ui).to(w.dtype), params(ranks)


def tt_approx(w: torch.Tensor, budget: float, layout: str = "o-k-i") -> tuple[torch.Tensor, int] | None:
    """TT truncation of ``w`` in ``layout`` at the largest ranks with params <= ``budget``, and
    its params; None where no ranks fit."""
    o, i, kh, kw = w.shape
    lay = TTLayout.parse(layout, o, i, (kh, kw))
    ranks = largest_within(rank_candidates(lay.max_ranks), lay.params, budget)
    if ranks is None:
        return None
    return truncate_batch([w], [lay], [ranks])[0], lay.params(ranks)


def format_approx(w: torch.Tensor, ratio: float, layout: str = "o-k-i") -> dict[str, tuple | None]:
    """Each format's approximation of ``w`` at params <= dense / ratio (None: impossible)."""
    if ratio < 1:
        raise CEPDError(f"compression ratios must be >= 1, got {ratio}")
    budget = math.prod(w.shape) / ratio
    return {"SVD": svd_approx(w, budget), "Tucker": tucker2_approx(w, budget),
            "TT": tt_approx(w, budget, layout)}  # fmt: skip
