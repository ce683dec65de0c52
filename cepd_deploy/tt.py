"""Tensor-train (TT) algebra for conv weights: layouts, TT-SVD, truncation, reconstruction.

A conv weight W (O, I, kh, kw) is viewed through a :class:`TTLayout`: O = O1*...*Od_o and
I = I1*...*Id_i (row-major, the first factor most significant), and the window is one mode
``k`` of size kh*kw. The layout is an ordered list of cores; core j owns a group of modes of
total size n_j and holds a tensor G_j of shape (r_{j-1}, n_j, r_j) with r_0 = r_m = 1.

>>> lay = TTLayout.preset("o-k-i", out_channels=64, in_channels=32, kernel=(3, 3))
>>> cores = tt_svd(torch.randn(64, 32, 3, 3), lay, ranks=(16, 16))
>>> [tuple(c.shape) for c in cores]
[(1, 64, 16), (16, 9, 16), (16, 32, 1)]
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import cached_property

import torch

from cepd_deploy.errors import CEPDError

#: Named layouts. ``o-k-i`` is the default (fits the paper's rank tables); ``eq9`` is the
#: paper's equation (9) with d = 2; ``oo-k-ii`` is a five-core chain for higher compression.
PRESETS = {
    "o-k-i": "o|k|i",
    "eq9": "k|o1,i1|o2,i2",
    "oo-k-ii": "o1|o2|k|i1|i2",
}

_MODE = re.compile(r"^(o|i)(\d*)$|^k$")


@dataclass(frozen=True)
class TTLayout:
    """Which modes each TT core owns, and the factor sizes of O and I.

    ``cores`` holds mode names per core: ``"k"`` (the kh*kw window), ``"o1".."od"`` (factors
    of O) and ``"i1".."id"`` (factors of I).
    """

    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    cores: tuple[tuple[str, ...], ...]
    o_factors: tuple[int, ...]
    i_factors: tuple[int, ...]

    def __post_init__(self) -> None:
        modes = [m for core in self.cores for m in core]
        want = {"k"} | {f"o{t + 1}" for t in range(len(self.o_factors))}
        want |= {f"i{t + 1}" for t in range(len(self.i_factors))}
        if sorted(modes) != sorted(want):
            raise CEPDError(f"TT layout {self.spec!r} must use each of {sorted(want)} exactly once")
        if math.prod(self.o_factors) != self.out_channels:
            raise CEPDError(f"O factors {self.o_factors} do not multiply to {self.out_channels}")
        if math.prod(self.i_factors) != self.in_channels:
            raise CEPDError(f"I factors {self.i_factors} do not multiply to {self.in_channels}")
        if any(not core for core in self.cores):
            raise CEPDError(f"TT layout {self.spec!r} has an empty core")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        spec: str,
        out_channels: int,
        in_channels: int,
        kernel: tuple[int, int],
        o_factors: tuple[int, ...] | None = None,
        i_factors: tuple[int, ...] | None = None,
    ) -> TTLayout:
        """Build a layout from a preset name or a spec such as ``"o1|o2|k|i1|i2"``.

        Missing factor tuples are filled with balanced factorisations.
        """
        text = PRESETS.get(spec, spec)
        cores = []
        for part in text.split("|"):
            names = tuple(m.strip() for m in part.split(",") if m.strip())
            for m in names:
                if not _MODE.match(m):
                    raise CEPDError(f"unknown TT mode {m!r} in layout {spec!r} (use k, oN, iN)")
            cores.append(tuple(_canonical(m) for m in names))
        d_o = sum(m.startswith("o") for c in cores for m in c)
        d_i = sum(m.startswith("i") for c in cores for m in c)
        o_factors = tuple(o_factors) if o_factors else balanced_factors(out_channels, d_o)
        i_factors = tuple(i_factors) if i_factors else balanced_factors(in_channels, d_i)
        if len(o_factors) != d_o or len(i_factors) != d_i:
            raise CEPDError(f"layout {spec!r} needs {d_o} O factors and {d_i} I factors")
        return cls(out_channels, in_channels, tuple(kernel), tuple(cores), o_factors, i_factors)

    preset = parse

    # -- derived ------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        return "|".join(",".join(core) for core in self.cores)

    @property
    def name(self) -> str:
        """The preset name when the layout is one (ignoring factor sizes), else its spec."""
        for preset, text in PRESETS.items():
            if TTLayout.parse(text, self.out_channels, self.in_channels, self.kernel).cores == self.cores:
                return preset
        return self.spec

    @property
    def num_cores(self) -> int:
        return len(self.cores)

    def mode_size(self, mode: str) -> int:
        if mode == "k":
            return self.kernel[0] * self.kernel[1]
        factors = self.o_factors if mode[0] == "o" else self.i_factors
        return factors[int(mode[1:]) - 1]

    @cached_property
    def core_sizes(self) -> tuple[int, ...]:
        """n_j: the product of the mode sizes of each core."""
        return tuple(math.prod(self.mode_size(m) for m in core) for core in self.cores)

    @cached_property
    def max_ranks(self) -> tuple[int, ...]:
        """The largest useful bond ranks: r_j <= min(n_1...n_j, n_{j+1}...n_m).

        Ranks above these add parameters without changing what the TT can represent.
        """
        n = self.core_sizes
        return tuple(min(math.prod(n[: j + 1]), math.prod(n[j + 1 :])) for j in range(len(n) - 1))

    def full_ranks(self) -> tuple[int, ...]:
        return self.max_ranks

    def clip_ranks(self, ranks: tuple[int, ...]) -> tuple[int, ...]:
        """Check the rank count and clip each rank to its useful maximum."""
        if len(ranks) != self.num_cores - 1:
            raise CEPDError(
                f"layout {self.spec!r} has {self.num_cores - 1} bonds, got ranks {tuple(ranks)}"
            )
        if any(int(r) < 1 for r in ranks):
            raise CEPDError(f"TT ranks must be >= 1, got {tuple(ranks)}")
        return tuple(min(int(r), m) for r, m in zip(ranks, self.max_ranks))

    def params(self, ranks: tuple[int, ...]) -> int:
        r = (1, *ranks, 1)
        return sum(r[j] * n * r[j + 1] for j, n in enumerate(self.core_sizes))

    # -- weight <-> core-ordered tensor -------------------------------------------------
    def _mode_order(self) -> list[str]:
        """Modes of W reshaped as (o1..od, i1..id, k): their positions in core order."""
        natural = [f"o{t + 1}" for t in range(len(self.o_factors))]
        natural += [f"i{t + 1}" for t in range(len(self.i_factors))] + ["k"]
        return natural

    def to_cores_tensor(self, weight: torch.Tensor) -> torch.Tensor:
        """Reshape W (O, I, kh, kw) to the (n_1, ..., n_m) tensor the TT factorises."""
        natural = self._mode_order()
        sizes = [self.mode_size(m) for m in natural]
        t = weight.reshape(sizes)
        order = [natural.index(m) for core in self.cores for m in core]
        return t.permute(order).reshape(self.core_sizes)

    def from_cores_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_cores_tensor`."""
        natural = self._mode_order()
        in_core_order = [m for core in self.cores for m in core]
        t = t.reshape([self.mode_size(m) for m in in_core_order])
        back = [in_core_order.index(m) for m in natural]
        kh, kw = self.kernel
        return t.permute(back).reshape(self.out_channels, self.in_channels, kh, kw)


def _canonical(mode: str) -> str:
    """``o`` and ``i`` alone mean the single factor ``o1`` / ``i1``."""
    return mode + "1" if mode in ("o", "i") else mode


def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """Split n into d ordered factors as equal as possible (factors of 1 allowed).

    >>> balanced_factors(256, 2), balanced_factors(17, 2)
    ((16, 16), (17, 1))
    """
    if d == 0:
        if n != 1:
            raise CEPDError(f"cannot split {n} into zero factors")
        return ()
    best = min(factorisations(n, d), key=lambda f: (max(f) / min(f), [-x for x in f]))
    return best


def factorisations(n: int, d: int) -> list[tuple[int, ...]]:
    """Every ordered way to write n as a product of d positive integers."""
    if d == 1:
        return [(n,)]
    out = []
    for a in _divisors(n):
        out.extend((a, *rest) for rest in factorisations(n // a, d - 1))
    return out


def _divisors(n: int) -> list[int]:
    return [a for a in range(1, n + 1) if n % a == 0]


# -- TT-SVD ---------------------------------------------------------------------------------
def tt_svd(weight: torch.Tensor, layout: TTLayout, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """TT-SVD of a conv weight: cores G_j (r_{j-1}, n_j, r_j) with ranks clipped to the useful maximum.

    Sequential truncated SVDs (Oseledets 2011); exact when ranks >= :attr:`TTLayout.max_ranks`.
    """
    ranks = layout.clip_ranks(ranks)
    return tt_svd_tensor(layout.to_cores_tensor(weight.detach()), ranks)


def tt_svd_tensor(t: torch.Tensor, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """TT-SVD of an m-way tensor with bond ranks ``ranks`` (length m-1)."""
    sizes = t.shape
    dtype = t.dtype
    work = t if t.dtype in (torch.float32, torch.float64) else t.float()
    cores: list[torch.Tensor] = []
    r_prev = 1
    for j, n in enumerate(sizes[:-1]):
        u, rest = top_svd(work.reshape(r_prev * n, -1), ranks[j])
        r = u.shape[-1]
        cores.append(u.reshape(r_prev, n, r).to(dtype))
        work = rest
        r_prev = r
    cores.append(work.reshape(r_prev, sizes[-1], 1).to(dtype))
    return cores


def top_svd(mat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The leading ``rank`` left singular vectors U of a (batch of) matrix A, and U^T A.

    Works on the Gram matrix of the shorter side (one matmul + a small symmetric
    eigendecomposition: several times faster than a full SVD of a wide conv unfolding), then
    projects: U U^T A is the best rank-r approximation, and exact when r reaches full rank.
    """
    rows, cols = mat.shape[-2:]
    r = min(rank, rows, cols)
    if rows <= cols:
        _, vecs = torch.linalg.eigh(mat @ mat.transpose(-1, -2))
        u = vecs[..., -r:].flip(-1)
    else:
        vals, vecs = torch.linalg.eigh(mat.transpose(-1, -2) @ mat)
        v = vecs[..., -r:].flip(-1)
        u, _ = torch.linalg.qr(mat @ v)  # orthonormal basis of A's leading directions
    return u, u.transpose(-1, -2) @ mat


def tt_full(cores: list[torch.Tensor]) -> torch.Tensor:
    """Contract TT cores back into the (n_1, ..., n_m) tensor."""
    out = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        out = out @ core.reshape(core.shape[0], -1)
        out = out.reshape(-1, core.shape[-1])
    return out.reshape([c.shape[1] for c in cores])


def reconstruct(cores: list[torch.Tensor], layout: TTLayout) -> torch.Tensor:
    """The dense conv weight (O, I, kh, kw) a TT represents."""
    return layout.from_cores_tensor(tt_full(cores))


def truncate(weight: torch.Tensor, layout: TTLayout, ranks: tuple[int, ...]) -> torch.Tensor:
    """The ADMM projection onto TT-ranks <= ``ranks``: TT-SVD, keep the leading directions, rebuild."""
    return reconstruct(tt_svd(weight, layout, ranks), layout)


def truncate_batch(
    weights: list[torch.Tensor], layouts: list[TTLayout], ranks: list[tuple[int, ...]]
) -> list[torch.Tensor]:
    """:func:`truncate` for many layers; layers of equal shape share one batched SVD per bond."""
    out: list[torch.Tensor | None] = [None] * len(weights)
    groups: dict[tuple, list[int]] = {}
    for idx, (lay, r) in enumerate(zip(layouts, ranks)):
        groups.setdefault((lay, lay.clip_ranks(r)), []).append(idx)
    for (lay, r), idxs in groups.items():
        t = torch.stack([lay.to_cores_tensor(weights[i].detach()) for i in idxs]).to(torch.float64)
        full = _tt_truncate_batched(t, r)
        for k, i in enumerate(idxs):
            out[i] = lay.from_cores_tensor(full[k]).to(weights[i].dtype)
    return out  # type: ignore[return-value]


def _tt_truncate_batched(t: torch.Tensor, ranks: tuple[int, ...]) -> torch.Tensor:
    """Batched TT-SVD truncation + rebuild of a (B, n_1, ..., n_m) stack."""
    b, sizes = t.shape[0], t.shape[1:]
    left = torch.ones(b, 1, 1, dtype=t.dtype)  # running product of the left cores (B, prod n, r)
    work = t
    r_prev = 1
    for j, n in enumerate(sizes[:-1]):
        u, work = top_svd(work.reshape(b, r_prev * n, -1), ranks[j])
        r = u.shape[-1]
        left = torch.bmm(left, u.reshape(b, r_prev, n * r)).reshape(b, -1, r)
        r_prev = r
    full = torch.bmm(left, work.reshape(b, r_prev, -1))
    return full.reshape(b, *sizes)


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """||W - W'||_F / ||W||_F (0 for an all-zero W matched exactly)."""
    denom = torch.linalg.vector_norm(weight.double())
    diff = torch.linalg.vector_norm((weight - approx).double())
    return float(diff / denom) if denom > 0 else float(diff)


def choose_factorisation(
    out_channels: int,
    in_channels: int,
    kernel: tuple[int, int],
    spec: str,
    ranks: tuple[int, ...],
    cost,
) -> TTLayout:
    """The O/I factorisation of ``spec`` that minimises ``cost(layout, ranks)``.

    ``cost`` is e.g. the MACs of the best contraction path or :meth:`TTLayout.params`.
    Ties go to the more balanced factorisation.
    """
    base = TTLayout.parse(spec, out_channels, in_channels, kernel)
    d_o, d_i = len(base.o_factors), len(base.i_factors)
    best, best_key = base, None
    for fo, fi in itertools.product(
        factorisations(out_channels, d_o), factorisations(in_channels, d_i)
    ):
        lay = TTLayout.parse(spec, out_channels, in_channels, kernel, fo, fi)
        key = (cost(lay, lay.clip_ranks(ranks)), max(fo + fi) / max(1, min(fo + fi)))
        if best_key is None or key < best_key:
            best, best_key = lay, key
    return best
