"""Views: what chains of view/reshape/permute/transpose/flatten do to a Plan value, found statically.

A Plan value is stored NCHW (or NF). The tensor a model's code sees may be a *view* of it: the
same elements under other dims, e.g. channels-last after ``x.permute(0, 2, 3, 1)``, or the
channel-shuffle ``view(n, g, c // g, h, w).transpose(1, 2)``. A :class:`View` describes one by
*atoms*: the stored dims split into factors, each atom a (size, id). The stored layout is the
atom sequence in id order; a view is a grouping of a permutation of the atoms into its dims.
Reshapes regroup (splitting an atom where a new dim boundary falls inside it), permutes reorder
dims. When an op needs the value stored in its own layout, the view says whether that is free
(the same order), a channel permutation (a Plan ``PERMUTE``), channels-last, or not possible.

>>> v = View.of((1, 8, 4, 4)).reshape((1, 2, 4, 4, 4)).permute((0, 2, 1, 3, 4)).reshape((1, 8, 4, 4))
>>> v.channel_permutation()
((2, 4), (1, 0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class ViewError(ValueError):
    """A reshape or permute that the static view algebra cannot follow."""


@dataclass(frozen=True)
class View:
    """``sizes[a]`` is atom a's size; ``stored`` groups atoms (in id order) into the stored dims;
    ``dims`` groups atoms into the dims the code sees. Size-1 dims hold no atom."""

    sizes: tuple[int, ...]
    stored: tuple[tuple[int, ...], ...]
    dims: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, shape: tuple[int, ...]) -> View:
        """The identity view of a stored value of ``shape``."""
        sizes, groups = [], []
        for s in shape:
            groups.append((len(sizes),) if s != 1 else ())
            if s != 1:
                sizes.append(s)
        return cls(tuple(sizes), tuple(groups), tuple(groups))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(math.prod(self.sizes[a] for a in d) for d in self.dims)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return tuple(math.prod(self.sizes[a] for a in d) for d in self.stored)

    @property
    def is_identity(self) -> bool:
        return self.dims == self.stored

    def _split(self, atom: int, outer: int) -> View:
        """Split ``atom`` into (outer, size // outer), row-major; renumber atoms in stored order."""
        size = self.sizes[atom]
        order = [a for d in self.stored for a in d]
        pieces = {a: [(a, 0)] for a in range(len(self.sizes))}
        pieces[atom] = [(atom, 0), (atom, 1)]
        new_size = {(a, 0): self.sizes[a] for a in range(len(self.sizes))}
        new_size[(atom, 0)], new_size[(atom, 1)] = outer, size // outer
        seq = [p for a in order for p in pieces[a]]
        renum = {p: i for i, p in enumerate(seq)}

        def regroup(groups):
            return tuple(tuple(renum[p] for a in g for p in pieces[a]) for g in groups)

        return View(tuple(new_size[p] for p in seq), regroup(self.stored), regroup(self.dims))

    def reshape(self, shape: tuple[int, ...]) -> View:
        """The view after ``reshape(shape)`` (one -1 allowed)."""
        shape = _resolve(tuple(int(s) for s in shape), math.prod(self.shape))
        view = self
        while True:
            atoms = [a for d in view.dims for a in d]
            groups, i = [], 0
            for s in shape:
                group, prod = [], 1
                while prod < s:
                    a = atoms[i]
                    if s % (prod * view.sizes[a]) == 0:
                        group.append(a)
                        prod *= view.sizes[a]
                        i += 1
                        continue
                    outer = s // prod
                    if view.sizes[a] % outer:
                        raise ViewError(f"cannot follow reshape {self.shape} -> {shape}")
                    view = view._split(a, outer)
                    break
                else:
                    groups.append(tuple(group))
                    continue
                break  # an atom was split: start again on the refined atoms
            else:
                return View(view.sizes, view.stored, tuple(groups))

    def permute(self, order: tuple[int, ...]) -> View:
        order = tuple(o % len(self.dims) for o in order)
        if sorted(order) != list(range(len(self.dims))):
            raise ViewError(f"permute {order} of a {len(self.dims)}-d tensor")
        return View(self.sizes, self.stored, tuple(self.dims[o] for o in order))

    def transpose(self, a: int, b: int) -> View:
        order = list(range(len(self.dims)))
        a, b = a % len(order), b % len(order)
        order[a], order[b] = order[b], order[a]
        return self.permute(tuple(order))

    def channel_permutation(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(axes, perm) of a Plan PERMUTE giving this view stored NCHW, when the view differs from
        the stored value only in the order of the channel dim's atoms; else None."""
        if len(self.stored) != 4 or self.shape != self.stored_shape:
            return None
        atoms = [a for d in self.dims for a in d]
        n, c, h, w = self.stored
        if atoms[: len(n)] != list(n) or atoms[len(atoms) - len(h) - len(w) :] != [*h, *w]:
            return None
        chan = atoms[len(n) : len(atoms) - len(h) - len(w)]
        if sorted(chan) != list(c):
            return None
        return tuple(self.sizes[a] for a in c), tuple(c.index(a) for a in chan)

    def channels_last(self) -> bool:
        """The view is the stored NCHW value as (N, H, W, C)."""
        return len(self.stored) == 4 and self.dims == tuple(self.stored[i] for i in (0, 2, 3, 1))

    def flattened(self) -> bool:
        """The view is the stored (N, C, H, W) value as (N, C*H*W) (or a stored 2-D value as is)."""
        if len(self.dims) != 2 or self.dims[0] != self.stored[0]:
            return False
        return self.dims[1] == tuple(a for d in self.stored[1:] for a in d)

    def stored_dim(self, dim: int) -> int | None:
        """The stored dim that a dim of the view is, whole; None if it is not one."""
        dim %= len(self.dims)
        if self.is_identity:
            return dim
        if self.channels_last():
            return (0, 2, 3, 1)[dim]
        group = self.dims[dim]
        return self.stored.index(group) if group and group in self.stored else None


def _resolve(shape: tuple[int, ...], total: int) -> tuple[int, ...]:
    if shape.count(-1) > 1 or any(s < -1 or s == 0 for s in shape):
        raise ViewError(f"cannot reshape to {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if total % known:
            raise ViewError(f"cannot reshape {total} elements to {shape}")
        shape = tuple(total // known if s == -1 else s for s in shape)
    if math.prod(shape) != total:
        raise ViewError(f"cannot reshape {total} elements to {shape}")
    return shape
