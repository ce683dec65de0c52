"""``convert``: replace the Conv2d layers of any model by CEPD convs (the direct method).

Either an explicit per-layer config, or a global target (FLOPs or params remaining) solved by
rank allocation: every converted layer gets the largest ranks whose cost is at most rho times
its dense cost, with one rho for the whole network found by bisection, then single layers are
raised greedily to close the remaining gap. Costs come from the Plan (``plan/cost.py``).

With a ``latency`` model (e.g. :class:`cepd_deploy.frontend.allocation.OrtLatency`, measured
single-layer latencies) the same FLOPs/params target is met with the per-layer choices (dense
or candidate ranks) that minimise the summed latency instead, with the total cost between
``WINDOW`` under the target and the target: a knapsack solved by dynamic programming on a
cost grid. Where the latency model can time a whole model (``in_model``), the first allocation
is run whole and the knapsack solved again with every option scaled by how that layer's chosen
option ran in the network, not alone. Which layers are compressed, and how hard, then follows
what actually costs time on the target; accuracy is not modelled, so the fine-tuning step
matters as it does for any allocation.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.candidates import Candidate, candidates, pooled_candidate
from cepd_deploy.frontend.lower import lower
from cepd_deploy.plan.cost import nodes_macs, totals
from cepd_deploy.plan.ttconv import CostFn, TTConvSpec, choose_path, lower_ttconv
from cepd_deploy.tt import TTLayout

TOLERANCE = 0.01  # the allocation hits a global target within 1% absolute
WINDOW = 0.002  # a latency-aware allocation aims this close under the target (the cost grid adds ~0.1%)


@dataclass(frozen=True)
class LayerProbe:
    """One conv as a latency model sees it: shapes, what follows it, the S it would keep."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_shape: tuple[int, ...]
    act: str | None
    kappa: int
    layout: str


#: ``(probe, ranks or None for dense) -> latency`` (any unit, summed over layers).
LatencyFn = Callable[[LayerProbe, "tuple[int, ...] | None"], float]


@dataclass(frozen=True)
class LayerChoice:
    """Ranks and kept filters for one conv."""

    ranks: tuple[int, ...]
    kappa: int
    layout: str = "o-k-i"


def kappa_for(out_channels: int, sparsity: float) -> int:
    """Filters S keeps at a filter sparsity (0.9 keeps 10%, rounded)."""
    if not 0.0 <= sparsity <= 1.0:
        raise CEPDError(f"sparsity must be in [0, 1], got {sparsity}")
    return int(round(out_channels * (1.0 - sparsity)))


def convert(
    model: nn.Module,
    *,
    flops_remaining: float | None = None,
    params_remaining: float | None = None,
    config: dict | str | Path | None = None,
    sparsity: float = 0.9,
    layout: str = "o-k-i",
    input_shape: Sequence[int] | None = None,
    convert_first: bool = False,
    cost: CostFn = nodes_macs,
    rank_multiple: int = 1,
    latency: LatencyFn | None = None,
) -> nn.Module:
    """A copy of ``model`` whose Conv2d layers are CEPD convs.

    Give exactly one of ``flops_remaining``, ``params_remaining`` (fractions of the dense
    model, solved within 1% absolute) or ``config`` (a dict or a YAML/JSON file: ``layers``
    maps module names or glob patterns to ``ranks`` and ``sparsity``/``kappa``/``layout``).
    Grouped and depthwise convs, the first conv (unless ``convert_first``), convs with
    one-sided padding, convs on pooled 1x1 maps (squeeze-excitation, heads; converted only when a
    config names them) and layers where no rank is cheaper than dense stay dense
    (:data:`~cepd_deploy.frontend.candidates.REASONS`). ``nn.Linear`` layers applied to
    channels-last maps (ConvNeXt's pointwise layers) are converted as 1x1 convs. ``cost``
    scores contraction orders (default: MACs).
    ``rank_multiple`` (targets only) restricts ranks to multiples of it (e.g. 16, the AVX-512
    width, for runtimes with blocked-channel kernels), capped at each layer's useful maximum.
    ``latency`` (targets only): allocate for the least summed latency at the target instead of
    uniformly (see the module docstring).

    >>> small = convert(build_model("resnet20"), flops_remaining=0.5)   # doctest: +SKIP
    """
    given = [x is not None for x in (flops_remaining, params_remaining, config)]
    if sum(given) != 1:
        raise CEPDError("give exactly one of flops_remaining, params_remaining or config")
    rank_config = _read_config(config) if config is not None else None  # refused before any work
    shape = _input_shape(model, input_shape)
    model = copy.deepcopy(model).eval()
    dense = lower(model, shape, cost=cost)
    convs, reasons = candidates(model, dense, convert_first)
    if config is not None:
        convs |= {name: pooled_candidate(model, name) for name, why in reasons.items() if why == "pooled"}
        choices = _from_config(rank_config, convs, sparsity, layout)
    else:
        metric = "macs" if flops_remaining is not None else "params"
        target = flops_remaining if flops_remaining is not None else params_remaining
        choices = allocate(dense, convs, target, metric, sparsity, layout, cost, rank_multiple, latency,
                           trial=lambda c: _apply(copy.deepcopy(model), convs, c))  # fmt: skip
    return _apply(model, convs, choices)


def _apply(model: nn.Module, convs: dict[str, Candidate], choices: dict[str, LayerChoice]) -> nn.Module:
    """``model`` (changed in place) with the chosen layers replaced by CEPD convs."""
    for name, choice in choices.items():
        _replace(model, name, convs[name].cepd(choice.ranks, choice.kappa, choice.layout))
    if hasattr(model, "cepd_arch"):
        model.cepd_arch = dict(model.cepd_arch)
    return model


def _input_shape(model: nn.Module, input_shape) -> tuple[int, ...]:
    if input_shape is None:
        arch = getattr(model, "cepd_arch", None)
        if arch is None:
            raise CEPDError("input_shape is required for a model that is not from the zoo")
        from cepd_deploy.model.zoo import input_shape as zoo_shape

        return (1, *zoo_shape(arch["name"]))
    shape = tuple(int(s) for s in input_shape)
    return shape if len(shape) == 4 else (1, *shape)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


# -- explicit config -------------------------------------------------------------------------
_CONFIG_KEYS = ("layers", "layout", "sparsity")
_ENTRY_KEYS = ("kappa", "layout", "ranks", "sparsity")
MAX_RANK = 1 << 16  #: largest TT rank a config may ask for (every real one is clipped far below)


def _read_config(config: dict | str | Path) -> dict:
    """A rank config (a dict, or a YAML/JSON file), checked in full before any layer is touched."""
    from cepd_deploy.untrusted import parse_json, parse_yaml, read_text

    if isinstance(config, dict):
        return _check_config(config, "config")
    path = Path(config)
    if not path.is_file():
        raise CEPDError(f"config file not found: {path}")
    text = read_text(path, "rank config")
    data = parse_json(text, path.name) if path.suffix == ".json" else parse_yaml(text, path.name)
    return _check_config(data, path.name)


def _check_config(data: object, where: str) -> dict:
    """Every key known, every value of its type and range; one-line errors naming the key."""
    from cepd_deploy.untrusted import brief

    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        raise CEPDError(f"{where}: a config needs a 'layers' mapping of name/pattern -> ranks")
    _known_keys(data, _CONFIG_KEYS, where)
    if "sparsity" in data:
        _config_sparsity(data["sparsity"], f"{where}: sparsity")
    if "layout" in data:
        _config_layout(data["layout"], f"{where}: layout")
    for pattern, entry in data["layers"].items():
        if not isinstance(pattern, str) or not pattern or len(pattern) > 200 or not pattern.isprintable():
            raise CEPDError(f"{where}: layers: {brief(pattern)} is not a module name or glob pattern")
        at = f"{where}: layers: {brief(pattern)}"
        if not isinstance(entry, dict) or "ranks" not in entry:
            raise CEPDError(f"{at}: expected a mapping with 'ranks' (e.g. {{ranks: [8, 8]}})")
        _known_keys(entry, _ENTRY_KEYS, at)
        ranks = entry["ranks"]
        if not isinstance(ranks, (list, tuple)) or not 1 <= len(ranks) <= 16 or not all(
                type(r) is int and 1 <= r <= MAX_RANK for r in ranks):  # fmt: skip
            raise CEPDError(f"{at}: ranks: expected a list of integers in [1, {MAX_RANK}], "
                            f"got {brief(ranks)}")  # fmt: skip
        if "kappa" in entry and not (type(entry["kappa"]) is int and entry["kappa"] >= 0):
            raise CEPDError(f"{at}: kappa: expected an integer >= 0, got {brief(entry['kappa'])}")
        if "sparsity" in entry:
            _config_sparsity(entry["sparsity"], f"{at}: sparsity")
        if "layout" in entry:
            _config_layout(entry["layout"], f"{at}: layout")
    return data


def _known_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    from cepd_deploy.untrusted import brief

    unknown = sorted((k for k in data if k not in allowed), key=repr)
    if unknown:
        raise CEPDError(f"{where}: unknown key {brief(unknown[0])} (allowed: {', '.join(allowed)})")


def _config_sparsity(value: object, where: str) -> None:
    from cepd_deploy.untrusted import brief

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise CEPDError(f"{where}: expected a number in [0, 1], got {brief(value)}")


def _config_layout(value: object, where: str) -> None:
    from cepd_deploy.untrusted import brief

    if not isinstance(value, str) or not value or len(value) > 64 or not value.isprintable():
        raise CEPDError(f"{where}: expected a layout such as 'o-k-i', got {brief(value)}")


def _from_config(
    cfg: dict, convs: dict[str, nn.Conv2d], sparsity: float, layout: str
) -> dict[str, LayerChoice]:
    default_sparsity = float(cfg.get("sparsity", sparsity))
    default_layout = str(cfg.get("layout", layout))
    choices = {}
    unmatched = set(cfg["layers"])
    for name, conv in convs.items():
        for pattern, entry in cfg["layers"].items():
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                unmatched.discard(pattern)
                choices[name] = _choice(name, conv, entry, default_sparsity, default_layout)
                break
    if unmatched:
        from cepd_deploy.untrusted import brief

        raise CEPDError(f"config names no convertible conv: {brief(sorted(unmatched)[0])}")
    return choices


def _choice(name, conv, entry, sparsity, layout) -> LayerChoice:
    """One layer's ranks and kept filters (``entry`` was checked by :func:`_check_config`)."""
    ranks = tuple(entry["ranks"])
    kappa = entry["kappa"] if "kappa" in entry else kappa_for(
        conv.out_channels, float(entry.get("sparsity", sparsity)))  # fmt: skip
    lay = str(entry.get("layout", layout))
    tt = TTLayout.parse(lay, conv.out_channels, conv.in_channels, tuple(conv.kernel_size))
    tt.clip_ranks(ranks)
    if not 0 <= kappa <= conv.out_channels:
        raise CEPDError(f"config entry for {name!r}: kappa {kappa} not in [0, {conv.out_channels}]")
    return LayerChoice(ranks, kappa, lay)


# -- global target ---------------------------------------------------------------------------
def rank_candidates(
    max_ranks: tuple[int, ...], count: int = 48, multiple: int = 1
) -> list[tuple[int, ...]]:
    """Rank tuples scaled uniformly from 1 to the useful maximum (at most ``count``), each rank
    rounded to a multiple of ``multiple`` (capped at its maximum)."""
    top = max(max_ranks)
    qs = sorted({max(1, round(top ** (k / (count - 1)))) for k in range(count)} | {1, top})
    qs = sorted(set(qs) | set(range(1, min(top, 16) + 1)))
    out = []
    for q in qs:
        r = tuple(min(m, max(1, math.ceil(q * m / top))) for m in max_ranks)
        if multiple > 1:
            r = tuple(min(m, max(multiple, round(x / multiple) * multiple)) for x, m in zip(r, max_ranks))
        if not out or r != out[-1]:
            out.append(r)
    return out


@lru_cache(maxsize=4096)
def _layer_costs(spec_key, metric: str, cost: Callable) -> tuple[float, ...]:
    lay, in_shape, stride, padding, dilation, kappa, candidates = spec_key
    out = []
    for ranks in candidates:
        spec = TTConvSpec(lay, ranks, kappa, stride, padding, dilation)
        if metric == "params":
            kh, kw = lay.kernel
            out.append(lay.params(ranks) + kappa * lay.in_channels * kh * kw)
        else:
            path = choose_path(spec, in_shape, cost)
            out.append(cost(lower_ttconv(spec, "_", "_x", in_shape, path)))
    return tuple(out)


def allocate(
    dense,
    convs: dict[str, Candidate],
    target: float,
    metric: str,
    sparsity: float,
    layout: str,
    cost: CostFn = nodes_macs,
    rank_multiple: int = 1,
    latency: LatencyFn | None = None,
    trial: Callable[[dict[str, LayerChoice]], nn.Module] | None = None,
) -> dict[str, LayerChoice]:
    """Per-layer ranks whose total ``metric`` ("macs" or "params") is ``target`` x dense. With a
    ``latency`` that has ``in_model`` (:class:`~cepd_deploy.frontend.allocation.OrtLatency`) and
    ``trial`` (choices -> the converted model), the latency allocation runs twice: the second with
    every option scaled by how the first allocation's layers ran in the whole model."""
    if not 0.0 < target <= 1.0:
        raise CEPDError(f"the {metric} target must be in (0, 1], got {target}")
    base = totals(dense)
    total_dense = base["macs"] if metric == "macs" else base["params"]
    rows = []  # (name, dense cost, [(cost, ranks or None)], kappa)
    probes: list[LayerProbe] = []
    for name, conv in convs.items():
        info = dense.layers[name]
        lay = TTLayout.parse(layout, conv.out_channels, conv.in_channels, tuple(conv.kernel_size))
        kappa = kappa_for(conv.out_channels, sparsity)
        cands = tuple(rank_candidates(lay.max_ranks, multiple=rank_multiple))
        key = (lay, info.in_shape, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation),
               kappa, cands)  # fmt: skip
        costs = _layer_costs(key, metric, cost)
        d = cost(dense.layer_nodes(name)) if metric == "macs" else info.dense_params
        # keep only candidates cheaper than dense (the bias is the same either way)
        bias = 0 if metric == "macs" else conv.out_channels
        keep = [(c + bias, r) for c, r in zip(costs, cands) if c + bias < d]
        if keep:
            rows.append((name, d, keep + [(d, None)], kappa))  # None: stay dense
            act = dense.layer_nodes(name)[-1].epilogue.act
            probes.append(_probe(conv, info.in_shape, act, kappa, layout))
    fixed = total_dense - sum(r[1] for r in rows)

    def pick(rho: float) -> list[int]:
        out = []
        for _, d, keep, _ in rows:
            k = 0
            while k + 1 < len(keep) and keep[k + 1][0] <= rho * d:
                k += 1
            out.append(k)
        return out

    def total(sel: list[int]) -> float:
        return fixed + sum(rows[i][2][k][0] for i, k in enumerate(sel))

    lowest = total([0] * len(rows)) / total_dense
    if target < lowest - TOLERANCE:
        raise CEPDError(
            f"{metric} target {target:.3f} is unreachable: the best reachable is {lowest:.3f}"
        )
    goal = target * total_dense
    if latency is not None:  # least latency with the total within WINDOW under the goal
        lats = _latencies(rows, probes, latency)  # measured only once the target is known reachable
        budget, floor = goal - fixed, goal - fixed - WINDOW * total_dense
        sel = _least_latency(rows, lats, budget, floor)
        if trial is not None and hasattr(latency, "in_model"):  # again, with in-model times
            chosen = {row[0]: (probe, row[2][k][1]) for row, probe, k in zip(rows, probes, sel)}
            scale = latency.in_model(trial(_chosen(rows, sel, layout)), dense.input_shape, chosen)
            lats = [[t * scale(probe, r) for t, (_, r) in zip(ts, row[2])]
                    for ts, row, probe in zip(lats, rows, probes)]  # fmt: skip
            sel = _least_latency(rows, lats, budget, floor)
    else:
        sel = _uniform(rows, pick, total, goal)
    achieved = total(sel) / total_dense
    if abs(achieved - target) > TOLERANCE:
        raise CEPDError(
            f"{metric} target {target:.3f} cannot be met within {TOLERANCE:.0%}: "
            f"the closest reachable is {achieved:.3f}"
        )
    return _chosen(rows, sel, layout)


def _chosen(rows, sel: list[int], layout: str) -> dict[str, LayerChoice]:
    """The CEPD layers of a selection (one option per row; dense options left out)."""
    return {rows[i][0]: LayerChoice(rows[i][2][k][1], rows[i][3], layout)
            for i, k in enumerate(sel) if rows[i][2][k][1] is not None}  # fmt: skip


def _uniform(rows, pick, total, goal: float) -> list[int]:
    """One rho for all layers (bisection), then single layers raised while under the goal."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(pick(mid)) <= goal else (lo, mid)
    sel = pick(lo)
    improved = True
    while improved:  # raise single layers while the total stays at or under the goal
        improved = False
        for i in sorted(range(len(rows)), key=lambda i: -rows[i][1]):
            if sel[i] + 1 < len(rows[i][2]):
                trial = sel[:i] + [sel[i] + 1] + sel[i + 1 :]
                if total(trial) <= goal:
                    sel, improved = trial, True
    return sel



def layer_probes(model: nn.Module, plan) -> dict[str, tuple[LayerProbe, tuple[int, ...]]]:
    """Each CEPD conv of a converted ``model`` (lowered to ``plan``) as a latency model sees it,
    with its ranks: what ``inspect --latency`` times against the dense conv it replaced. Layers
    that replaced an ``nn.Linear`` on channels-last maps are left out (no conv probe stands for
    them)."""
    from cepd_deploy.model.layers import CEPDConv2d

    modules = dict(model.named_modules())
    out = {}
    for name, info in plan.layers.items():
        mod = modules.get(name)
        if info.kind != "cepd" or not isinstance(mod, CEPDConv2d) or mod.channels_last:
            continue
        s, (o, i, kh, kw) = mod.spec, info.weight_shape
        act = plan.layer_nodes(name)[-1].epilogue.act
        out[name] = (LayerProbe(i, o, (kh, kw), s.stride, s.padding, s.dilation, (1, *info.in_shape[1:]), act,
                                s.kappa, s.layout.name), tuple(s.ranks))  # fmt: skip
    return out


def _probe(conv: Candidate, in_shape, act: str | None, kappa: int, layout: str) -> LayerProbe:
    return LayerProbe(conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                      tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), tuple(in_shape),
                      act, kappa, layout)  # fmt: skip


def _latencies(rows, probes: list[LayerProbe], latency: LatencyFn) -> list[list[float]]:
    """Every option's latency (through ``latency.many([(probe, ranks), ...])`` where the model
    measures many options together, e.g. :class:`~cepd_deploy.frontend.allocation.OrtLatency`)."""
    pairs = [(probe, r) for row, probe in zip(rows, probes) for _, r in row[2]]
    many = getattr(latency, "many", None)
    flat = iter(many(pairs) if many else [latency(p, r) for p, r in pairs])
    out = [[float(next(flat)) for _ in row[2]] for row in rows]
    if hasattr(latency, "save"):
        latency.save()
    return out


def _least_latency(rows, lats: list[list[float]], budget: float, floor: float,
                   bins: int = 16384) -> list[int]:  # fmt: skip
    """Per-layer options with the least summed latency whose summed cost is in [floor, budget].

    A knapsack solved by dynamic programming over a grid of ``bins`` cost steps (costs rounded
    down, so the floor holds to within a step per layer; the grid budget shrinks by any
    overshoot until the exact cost fits). When no choice lands in the window, the cheapest
    options are returned (the caller reports the miss).
    """
    costs = [[c for c, _ in row[2]] for row in rows]
    limit = budget
    for _ in range(20):
        sel = _knapsack(costs, lats, limit, floor, bins)
        if sel is None:
            break
        spent = sum(c[k] for c, k in zip(costs, sel))
        if spent <= budget:
            return sel
        limit -= spent - budget
    return [min(range(len(c)), key=c.__getitem__) for c in costs]


def _knapsack(costs: list[list[float]], lats: list[list[float]], limit: float, floor: float,
              bins: int) -> list[int] | None:  # fmt: skip
    """Least summed latency, one option per row, grid cost (cost // unit summed) within
    [floor / unit, bins] where unit = limit / bins (None if nothing fits)."""
    import numpy as np

    if limit <= 0 or floor > limit:
        return None
    unit = limit / bins
    best = np.full(bins + 1, np.inf)
    best[0] = 0.0
    choice = []
    for c, t in zip(costs, lats):
        new, arg = np.full(bins + 1, np.inf), np.zeros(bins + 1, np.int64)
        for k, (ck, tk) in enumerate(zip(c, t)):
            step = int(ck // unit)
            if step > bins:
                continue
            cand = np.full(bins + 1, np.inf)
            cand[step:] = best[: bins + 1 - step] + tk
            better = cand < new
            new[better], arg[better] = cand[better], k
        best = new
        choice.append(arg)
    low = max(0, int(np.ceil(floor / unit)) - len(costs))  # the rounding down may lose a unit per row
    b = low + int(np.argmin(best[low:]))
    if not np.isfinite(best[b]):
        return None
    sel = [0] * len(costs)
    for i in range(len(costs) - 1, -1, -1):
        sel[i] = int(choice[i][b])
        b -= int(costs[i][sel[i]] // unit)
    return sel
