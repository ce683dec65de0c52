"""Contraction orders of a TT-conv and the primitive ops each order lowers to.

The input x (N, I, H, W) is a state with labelled channel axes (i1, ..., id). Absorbing a core
contracts the labels it shares with the state (its I modes and the bonds to already absorbed
neighbours) and adds its other labels (O modes, bonds to cores not yet absorbed). The core
that owns the window ``k`` is a spatial conv on an (N*outer, cin, H, W) view; the others are
channel matmuls on an (N*outer, cin, inner*H*W) view. When the contracted labels are not
where a folded view needs them, a PERMUTE moves them first. Every order of the cores is a
candidate (a core is only absorbed once it touches the state), plus "rebuild the dense W".

Bonds are named ``r1 .. r{m-1}``: bond j joins core j-1 and core j (0-based cores).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from cepd_deploy.tt import TTLayout


@dataclass(frozen=True)
class Step:
    """Absorb core ``core``: permute the state by ``perm`` (if any), then contract."""

    core: int
    conv: bool
    perm: tuple[int, ...] | None
    before: tuple[str, ...]  # state labels after the permute
    contracted: tuple[str, ...]  # in state order
    new: tuple[str, ...]  # in core order
    after: tuple[str, ...]


@dataclass(frozen=True)
class Path:
    """A contraction order: the steps, then a final permute to (o1, ..., od) if needed."""

    steps: tuple[Step, ...]
    final_perm: tuple[int, ...] | None
    final_before: tuple[str, ...]

    def describe(self, layout: TTLayout) -> str:
        return ">".join("+".join(layout.cores[s.core]) for s in self.steps)


DENSE = "dense"


def core_labels(layout: TTLayout, c: int) -> tuple[str, ...]:
    """Labels of core c: left bond, its modes, right bond (the chain ends have no bond)."""
    left = (f"r{c}",) if c > 0 else ()
    right = (f"r{c + 1}",) if c < layout.num_cores - 1 else ()
    return left + layout.cores[c] + right


def label_sizes(layout: TTLayout, ranks: tuple[int, ...]) -> dict[str, int]:
    """Size of every label of a layout's cores: each mode's factor and each bond's rank."""
    sizes = {m: layout.mode_size(m) for core in layout.cores for m in core}
    sizes.update({f"r{j + 1}": r for j, r in enumerate(ranks)})
    return sizes


@lru_cache(maxsize=256)
def enumerate_paths(layout: TTLayout) -> tuple[Path, ...]:
    """Every valid absorption order of the cores (depends on the layout's structure only)."""
    start = tuple(f"i{t + 1}" for t in range(len(layout.i_factors)))
    target = tuple(f"o{t + 1}" for t in range(len(layout.o_factors)))
    paths = []
    for order in itertools.permutations(range(layout.num_cores)):
        state, steps = start, []
        for c in order:
            step = _absorb(layout, state, c)
            if step is None:
                break
            steps.append(step)
            state = step.after
        else:
            perm = None if state == target else tuple(state.index(t) for t in target)
            paths.append(Path(tuple(steps), perm, state))
    return tuple(paths)


def _absorb(layout: TTLayout, state: tuple[str, ...], c: int) -> Step | None:
    labels = core_labels(layout, c)
    conv = "k" in layout.cores[c]
    contracted = tuple(x for x in state if x in labels)
    if not contracted and not conv:
        return None  # an outer product with nothing contracted: never useful
    new = tuple(x for x in labels if x not in state and x != "k")
    pos = [state.index(x) for x in contracted]
    rest = tuple(x for x in state if x not in contracted)
    if conv:
        ok = state[len(rest) :] == contracted
    else:
        ok = not pos or pos == list(range(pos[0], pos[0] + len(pos)))
    perm = None
    if not ok:
        perm = tuple(state.index(x) for x in rest + contracted)
        state = rest + contracted
    if contracted:
        at = state.index(contracted[0])
        after = state[:at] + new + state[at + len(contracted) :]
    else:
        after = state + new
    return Step(c, conv, perm, state, contracted, new, after)


def step_dims(step: Step, sizes: dict[str, int]) -> tuple[int, int, int, int]:
    """(outer, cin, cout, inner) of a step's folded view."""
    if step.contracted:
        at = step.before.index(step.contracted[0])
        tail = step.before[at + len(step.contracted) :]
    else:
        at, tail = len(step.before), ()
    outer = math.prod(sizes[x] for x in step.before[:at])
    cin = math.prod(sizes[x] for x in step.contracted)
    cout = math.prod(sizes[x] for x in step.new)
    inner = math.prod(sizes[x] for x in tail)
    return outer, cin, cout, inner


def step_weight(
    step: Step, layout: TTLayout, core: torch.Tensor, sizes: dict[str, int]
) -> torch.Tensor:
    """The weight of a step from its core (differentiable): (cout, cin) or (cout, cin, kh, kw)."""
    labels = core_labels(layout, step.core)
    t = core.reshape([sizes[x] for x in labels])
    order = list(step.new) + list(step.contracted) + (["k"] if step.conv else [])
    t = t.permute([labels.index(x) for x in order])
    cout = math.prod(sizes[x] for x in step.new)
    cin = math.prod(sizes[x] for x in step.contracted)
    if step.conv:
        return t.reshape(cout, cin, *layout.kernel)
    return t.reshape(cout, cin)
