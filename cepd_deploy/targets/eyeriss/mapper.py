"""Row-stationary mapping search and its cost (Chen et al., ISCA 2016; JSSC 2017).

Spatial mapping: a logical PE set is R filter rows x E output rows. It is cut into physical
strips of ``set_rows`` (<= array rows; more filter rows fold in time) x ``strip_cols`` (<= array
cols) PEs, and strips are replicated over the array: ``channel_sets`` stacked vertically process
different channels and accumulate their psums down the column; the remaining slots hold
``parallel_strips`` strips of the same set (E folding), ``filter_sets`` groups of filters sharing
the ifmap, ``group_sets`` conv groups and ``image_sets`` images.

Per PE: ``p`` filters x ``q`` channels of one filter row (``p*q*S`` words in the filter spad, a
``q*S`` sliding window in the ifmap spad, ``p`` psums); one *pass* is a 1-D row convolution that
produces F outputs for p filters (F*p*q*S MACs at one MAC per cycle).

GLB tiling (outer to inner): images (``n_tile``) -> groups -> filters (``m_tile``, their psums for
``e_tile`` output rows stay in the GLB) -> output rows -> channel chunks (``q*channel_sets``
channels of the ifmap tile, from DRAM) -> filter sub-groups (loaded from DRAM into the spads;
filters bypass the GLB, as on the chip) -> row folds -> strip rounds -> image rounds. The output
columns may be cut into ``width_tiles`` tiles (each one more image with its halo): the search
tries 1, 2, 4, ... tiles until one does no better, so narrower psum rows can buy larger tiles or
better-filled arrays even when whole rows fit. An ifmap or output that stays in the GLB across ops
(a chained TT step's, ``Traffic``) costs no DRAM transfer and holds its GLB space meanwhile.

Constraints (``Spec.constraints``, as Timeloop's constraint files): rules bounding or pinning any
of :data:`~.spec.QUANTITIES` for the convs whose dimensions match; the search keeps to them and
tries their bounds as values, so a published mapping can be pinned whole.

Cycles: processing = max(PE compute, GLB port time) + filter loads (the spads hold one filter
set, so a load stalls the array unless ``filter_double_buffered``); then the ifmap/ofmap DRAM
transfers, which on the chip do not overlap processing (``dram.overlaps_processing``).
Energy: access counts x the spec's relative energies (MAC = 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.targets.eyeriss.problem import ConvProblem, ceil_div
from cepd_deploy.targets.eyeriss.spec import QUANTITIES, Spec

#: mapping parameters, in the order of :class:`Mapping`'s fields
PARAMS = ("set_rows", "strip_cols", "parallel_strips", "filter_sets", "channel_sets", "group_sets",
          "image_sets", "p", "q", "m_tile", "n_tile", "e_tile")  # fmt: skip
#: the conv dimension each quantity a constraint bounds cannot usefully exceed: a minimum above it
#: means the dimension itself (a pin p: 16 on a layer of 8 filters gives p = 8)
EXTENT = {"set_rows": "r", "strip_cols": "e", "parallel_strips": "e", "filter_sets": "m", "channel_sets": "c",
          "group_sets": "g", "image_sets": "n", "p": "m", "q": "c", "m_tile": "m", "n_tile": "n",
          "e_tile": "e", "width_tiles": "f", "psum_channels": "c"}  # fmt: skip
assert set(EXTENT) == set(QUANTITIES) == {*PARAMS, "width_tiles", "psum_channels"}
#: quantity -> (low, high) bounds in force for one conv (high None: unbounded)
Limits = dict[str, tuple[int, int | None]]
#: candidates kept (by cycles and by energy) from the spatial search for the GLB tiling search
TOP_K = 32
#: fraction of the array slots a replication must fill to be tried (all, when none of those fits)
FILL = 0.75
#: objective ties: within this fraction of the best, the other objective decides
TIE = 0.01
#: output-width tilings tried (each column tile is one more image with its halo), in order, until
#: PATIENCE of them in a row did no better than the best before them
WIDTH_TILES = (1, 2, 4, 8, 16, 32, 64)
PATIENCE = 1


@dataclass(frozen=True)
class Mapping:
    """One row-stationary mapping of a :class:`ConvProblem` (see the module docstring)."""

    set_rows: int
    strip_cols: int
    parallel_strips: int
    filter_sets: int
    channel_sets: int
    group_sets: int
    image_sets: int
    p: int
    q: int
    m_tile: int
    n_tile: int
    e_tile: int
    width_tiles: int = 1  # output columns cut into this many tiles (each with its halo)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in (*PARAMS, "width_tiles")}


@dataclass(frozen=True)
class Traffic:
    """What the DRAM side of a conv looks like: compression of its ifmap/ofmap, and what stays in
    the GLB (a chained TT step's ifmap or ofmap, a fused scatter's dense part)."""

    ifmap_ratio: float = 1.0  # DRAM words per ifmap value (RLC)
    ofmap_ratio: float = 1.0  # DRAM words per ofmap value; 0 when the output stays on chip
    ifmap_zeros: float = 0.0  # zero fraction of the ifmap (zero gating)
    ofmap_kept: float = 0.0  # fraction of the outputs that stay in the GLB (never read out to DRAM)
    ifmap_resident: bool = False  # the whole ifmap is already in the GLB (left there by its producer)
    ofmap_resident: bool = False  # the whole output stays in the GLB (psums accumulate in place)
    held_words: int = 0  # GLB words the resident ifmap/outputs hold for the whole op


def search(problem: ConvProblem, spec: Spec, objective: str = "latency",
           traffic: Traffic = Traffic()) -> tuple[Mapping, dict[str, float]]:  # fmt: skip
    """The best mapping of ``problem`` for ``objective`` ("latency" or "energy") and its cost.

    >>> m, cost = search(ConvProblem(1, 1, 64, 64, 58, 58, 3, 3, 56, 56), load_spec())  # doctest: +SKIP
    """
    if objective not in ("latency", "energy"):
        raise CEPDError(f"objective must be latency or energy, got {objective!r}")
    return _search(problem, spec, objective, traffic)


@functools.lru_cache(maxsize=4096)
def _search(problem: ConvProblem, spec: Spec, objective: str, traffic: Traffic):
    found, key, worse = [], "cycles" if objective == "latency" else "energy", 0
    floor = _cycles_floor(problem, spec, traffic) * (1 + TIE) if objective == "latency" else 0.0
    rules = tuple(rule for rule in spec.constraints if rule.applies(problem))
    low, high = bounds(problem, rules).get("width_tiles", (1, None))
    for tiles in WIDTH_TILES:
        sub = _split_width(problem, tiles)
        if sub is None or worse == PATIENCE or (found and min(c[key] for _, c in found) <= floor):
            break
        if tiles < low or (high is not None and tiles > high):
            continue
        best = _search_tiled(sub, spec, objective, traffic, bounds(sub, rules))
        if best is not None:
            mapping, cost = best
            worse = worse + 1 if found and cost[key] >= min(c[key] for _, c in found) else 0
            found.append((Mapping(*(getattr(mapping, k) for k in PARAMS), width_tiles=tiles), cost))
    if not found:
        within = " within its mapping constraints" if rules else ""
        raise CEPDError(f"no row-stationary mapping of {problem} fits {spec.name}'s scratchpads and "
                        f"GLB{within}")  # fmt: skip
    costs = {k: np.array([c[k] for _, c in found]) for k in ("cycles", "energy")}
    return found[_pick(dict(costs, fits=np.ones(len(found), dtype=bool)), objective)]


def _cycles_floor(p: ConvProblem, spec: Spec, traffic: Traffic) -> float:
    """Cycles no mapping can beat: every MAC on a PE, every output written to the GLB once, every
    filter, ifmap and ofmap word through DRAM once (column tiles only add halo)."""
    compute = p.macs / (spec.pes * spec.rf.macs_per_cycle)
    port = p.outputs / spec.glb.psum_write_words_per_cycle
    load = 0 if spec.rf.filter_double_buffered else p.weights / spec.dram_words_per_cycle
    act = p.inputs * traffic.ifmap_ratio + p.outputs * traffic.ofmap_ratio
    return float(spec.transfer_cycles(max(compute, port) + load, act, p.weights))


def _split_width(p: ConvProblem, tiles: int) -> ConvProblem | None:
    """The problem as ``tiles`` column tiles (each an extra image with its halo), or None."""
    if tiles == 1:
        return p
    if tiles > p.f:
        return None
    f = ceil_div(p.f, tiles)
    w = (f - 1) * p.uw + (p.s - 1) * p.dw + 1
    pad = p.pad_words * w // p.w
    return ConvProblem(p.n * tiles, p.g, p.c, p.m, p.h, w, p.r, p.s, p.e, f, p.uh, p.uw, p.dh, p.dw, pad)


def cost_of(problem: ConvProblem, spec: Spec, mapping: Mapping,
            traffic: Traffic = Traffic()) -> dict[str, float]:  # fmt: skip
    """The cost of one given mapping (e.g. a published one), as :func:`search` reports it."""
    sub = _split_width(problem, mapping.width_tiles)
    if sub is None:
        raise CEPDError(f"{mapping.width_tiles} column tiles do not fit an output {problem.f} wide")
    cols = {k: np.array([getattr(mapping, k)], dtype=np.int64) for k in PARAMS}
    return {k: float(v[0]) for k, v in evaluate(sub, spec, cols, traffic).items()}


def bounds(problem: ConvProblem, rules) -> Limits:
    """Quantity -> (low, high) from the constraint rules that apply, intersected; a low above the
    quantity's extent (:data:`EXTENT`) is clipped to it."""
    out: Limits = {}
    for rule in rules:
        for name, lo, hi in rule.bounds:
            a, b = out.get(name, (1, None))
            lo = min(lo or 1, getattr(problem, EXTENT[name]))
            out[name] = (max(a, lo), hi if b is None else b if hi is None else min(b, hi))
    return out


def admissible(cand: dict[str, np.ndarray], limits: Limits) -> np.ndarray | None:
    """Which candidates keep within ``limits`` (those on the quantities ``cand`` has); None: all."""
    keep = None
    for name, (lo, hi) in limits.items():
        value = cand["q"] * cand["channel_sets"] if name == "psum_channels" else cand.get(name)
        if value is None:
            continue
        ok = (value >= lo) & (value <= (hi if hi is not None else value))
        keep = ok if keep is None else keep & ok
    return keep


def _search_tiled(problem: ConvProblem, spec: Spec, objective: str, traffic: Traffic, limits=None):
    for fill in (FILL, 0.0):  # sparse replications only when no well-filled one fits the GLB
        found = _search_filled(problem, spec, objective, traffic, fill, limits or {})
        if found is not None:
            return found
    return None


def _search_filled(problem: ConvProblem, spec: Spec, objective: str, traffic: Traffic, fill: float,
                   limits: Limits):  # fmt: skip
    spatial = _spatial_cached(problem, spec, fill, tuple(sorted(limits.items())))
    keep = admissible(spatial, limits)
    if keep is not None:
        spatial = {k: v[keep] for k, v in spatial.items()}
    if not spatial["p"].size:
        return None
    # stage 1: every spatial/PE candidate with its smallest GLB tile; keep the best TOP_K
    smallest = np.minimum(problem.e, spatial["strip_cols"] * spatial["parallel_strips"])
    first = dict(spatial, m_tile=spatial["p"] * spatial["filter_sets"], n_tile=spatial["image_sets"],
                 e_tile=smallest)  # fmt: skip
    cost = evaluate(problem, spec, first, traffic)
    ok = cost["fits"]
    if not ok.any():
        return None
    top = min(TOP_K, int(ok.sum()))
    if top < len(ok):  # the best by either measure, so both objectives see the same candidates
        best = [np.argpartition(np.where(ok, cost[k], np.inf), top - 1)[:top] for k in ("cycles", "energy")]
        order = np.unique(np.concatenate(best))
    else:
        order = np.flatnonzero(ok)
    # stage 2: those candidates crossed with larger GLB tiles
    tiled = _tilings(problem, {name: v[order] for name, v in spatial.items()}, limits)
    keep = admissible(tiled, limits)
    if keep is not None:
        tiled = {k: v[keep] for k, v in tiled.items()}
        if not keep.any():
            return None
    cost = evaluate(problem, spec, tiled, traffic)
    best = _pick(cost, objective)
    mapping = Mapping(*(int(tiled[k][best]) for k in PARAMS))
    return mapping, {k: float(v[best]) for k, v in cost.items()}


def _pick(cost: dict[str, np.ndarray], objective: str) -> int:
    first, second = ("cycles", "energy") if objective == "latency" else ("energy", "cycles")
    a = np.where(cost["fits"], cost[first], np.inf)
    near = np.flatnonzero(a <= a.min() * (1 + TIE))
    return int(near[np.lexsort((a[near], cost[second][near]))[0]])


@functools.cache
def _options(limit: int, slots: int) -> tuple[int, ...]:
    """Replication factors worth trying: the ones that fill ``slots`` or cover ``limit`` exactly."""
    top = min(limit, slots)
    vals = {top, 1}
    vals.update(v for v in (slots // k for k in range(1, slots + 1)) if v <= top)
    first = ceil_div(limit, top)  # ceil(limit / k) <= top from here; keep the values above top / 4
    covers = (ceil_div(limit, k) for k in range(first, min(limit, 4 * first + 4) + 1))
    vals.update(v for v in covers if v * 4 > top)
    return tuple(sorted(vals))


@functools.cache
def _strip_widths(e: int, cols: int) -> tuple[int, ...]:
    """Strip widths worth trying: for each number of strips side by side, the widest."""
    widest: dict[int, int] = {}
    for k in range(1, e + 1):
        w = ceil_div(e, k)
        if w <= cols:
            widest.setdefault(cols // w, w)
    return tuple(sorted(widest.values(), reverse=True))


@functools.cache
def _occupancies(n: int) -> tuple[int, ...]:
    """n, n/2, n/4, ... and the powers of two below n: the scratchpad occupancies tried per PE
    (each then rounded to the smallest value with the same number of rounds over M or C)."""
    bits = range(n.bit_length())
    return tuple(sorted({max(1, n >> k) for k in bits} | {1 << k for k in bits}))


def _ends(limits: Limits, name: str, top: int) -> tuple[int, ...]:
    """A bounded quantity's ends that lie in 1..top (added to the values tried, so pins are)."""
    lo, hi = limits.get(name, (None, None))
    return tuple(v for v in (lo, hi) if v is not None and 1 <= v <= top)


@functools.lru_cache(maxsize=16)
def _spatial_cached(p: ConvProblem, spec: Spec, fill: float, limits: tuple) -> dict[str, np.ndarray]:
    """:func:`_spatial_candidates`, shared by the searches of one conv under different traffic
    (a chained step is mapped with and without its values in the GLB); callers never write to it."""
    return _spatial_candidates(p, spec, fill, dict(limits))


def _spatial_candidates(p: ConvProblem, spec: Spec, fill: float = FILL,
                        limits: Limits | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    limits = limits or {}
    rows, cols = spec.array.rows, spec.array.cols
    set_rows = min(p.r, rows)
    s_cols = min(p.s, spec.rf.ifmap_size_words)
    vertical = rows // set_rows
    lo_b, hi_b = limits.get("image_sets", (1, None))

    def tried(name: str, limit: int, slots: int) -> tuple[int, ...]:  # and a constraint's ends
        if name not in limits:
            return _options(limit, slots)
        return tuple(sorted({*_options(limit, slots), *_ends(limits, name, min(limit, slots))}))

    groups: dict[tuple[int, int], list[tuple[int, ...]]] = {}
    for e in sorted({*_strip_widths(p.e, cols), *_ends(limits, "strip_cols", min(p.e, cols))}, reverse=True):
        strips, across = ceil_div(p.e, e), cols // e
        for r in tried("channel_sets", p.c, vertical):
            slots = (vertical // r) * across
            most = min(slots, strips * p.m * p.g * p.n)
            for se in tried("parallel_strips", strips, slots):
                for t in tried("filter_sets", p.m, slots // se):
                    for g in tried("group_sets", p.g, slots // (se * t)):
                        b = min(p.n, slots // (se * t * g)) if fill else 1
                        b = min(max(b, min(lo_b, p.n)), hi_b or b)
                        if se * t * g * b <= slots and se * t * g * b >= fill * most:
                            groups.setdefault((t, r), []).append((e, se, t, r, g, b))
    pmax = min(spec.rf.psum_size_words, spec.rf.filter_size_words // s_cols)
    qmax = spec.rf.ifmap_size_words // s_cols
    extra = (_ends(limits, "p", pmax), _ends(limits, "q", qmax))
    parts = []
    for (t, r), tuples in groups.items():
        spad = spec.rf.filter_size_words
        pq = _pe_options(pmax, qmax, ceil_div(p.m, t), ceil_div(p.c, r), s_cols, spad, *extra)
        base = np.array(tuples, dtype=np.int64)
        parts.append(np.concatenate([np.repeat(base, len(pq), 0), np.tile(pq, (len(base), 1))], 1))
    table = np.concatenate(parts) if parts else np.zeros((0, 8), dtype=np.int64)
    out = dict(zip(PARAMS[1:9], table.T))
    out["set_rows"] = np.full(len(table), set_rows)
    return out


@functools.cache
def _pe_options(pmax: int, qmax: int, m_per_set: int, c_per_set: int, s_cols: int, spad: int,
                p_ends: tuple[int, ...] = (), q_ends: tuple[int, ...] = ()) -> np.ndarray:  # fmt: skip
    """(p, q) pairs that fit the scratchpads, each rounded to its fewest-waste size. For each q,
    the largest p that fits, and smaller ones only as powers of two (they help only when the
    GLB, not the spad, is the limit); and a constraint's ends (``p_ends``, ``q_ends``) as given."""
    ps = sorted({*_rounded(_occupancies(pmax), m_per_set), *p_ends})
    qs = sorted({*_rounded(_occupancies(qmax), c_per_set), *q_ends})
    pairs = set()
    for b in qs:
        fit = [a for a in ps if a * b * s_cols <= spad]
        if fit:
            pairs.add((fit[-1], b))
            pairs.update((a, b) for a in fit if a & (a - 1) == 0 or a in p_ends)
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


@functools.cache
def _rounded(sizes: tuple[int, ...], total: int) -> tuple[int, ...]:
    """Each size rounded down to the smallest one taking as many rounds to cover ``total``."""
    return tuple(sorted({ceil_div(total, ceil_div(total, min(x, total))) for x in sizes}))


def _near(limits: Limits, name: str, unit: np.ndarray, size: int) -> list[np.ndarray]:
    """Tile multipliers reaching a bounded tile's ends: the lowest at or above its low, the highest
    at or below its high (within 1 and the multiplier covering ``size``)."""
    if name not in limits:
        return []
    lo, hi = limits[name]
    ks = [-(-lo // unit)] + ([hi // unit] if hi is not None else [])
    return [np.clip(k, 1, -(-size // unit)) for k in ks]


def _steps(n: np.ndarray) -> list[np.ndarray]:
    """Tile multipliers 1, 2, 3, 4, 6, 8, 12, ... capped per candidate at ``n``, then ``n`` itself."""
    ks = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]
    return [np.minimum(k, n) for k in ks if k <= int(n.max())] + [n]


def _tilings(p: ConvProblem, cand: dict[str, np.ndarray],
             limits: Limits | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Cross each candidate with its GLB tile options (images, output rows, filters), and the
    multiples nearest a constraint's ends."""
    limits = limits or {}
    unit_m = cand["p"] * cand["filter_sets"]
    unit_e = np.minimum(p.e, cand["strip_cols"] * cand["parallel_strips"])
    unit_n = cand["image_sets"]
    ms, es, ns = (_steps(-(-size // unit)) + _near(limits, name, unit, size)
                  for name, unit, size in (("m_tile", unit_m, p.m), ("e_tile", unit_e, p.e),
                                           ("n_tile", unit_n, p.n)))  # fmt: skip
    parts = []
    for km in ms:
        for ke in es:
            for kn in ns:
                parts.append(dict(cand, m_tile=np.minimum(p.m, unit_m * km),
                                  e_tile=np.minimum(p.e, unit_e * ke),
                                  n_tile=np.minimum(p.n, unit_n * kn)))  # fmt: skip
    return {k: np.concatenate([d[k] for d in parts]) for k in parts[0]}


def evaluate(p: ConvProblem, spec: Spec, m: dict[str, np.ndarray], traffic: Traffic = Traffic()):
    """Cycles, access counts and energy of mappings ``m`` (arrays of :data:`PARAMS`), vectorised."""
    rf, glb = spec.rf, spec.glb
    s_cols = min(p.s, rf.ifmap_size_words)
    row_folds, col_folds = ceil_div(p.r, int(m["set_rows"][0])), ceil_div(p.s, s_cols)
    folds = row_folds * col_folds
    e, se, t, r = m["strip_cols"], m["parallel_strips"], m["filter_sets"], m["channel_sets"]
    g, b, pp, qq = m["group_sets"], m["image_sets"], m["p"], m["q"]
    mt, et, nt = m["m_tile"], m["e_tile"], m["n_tile"]
    # loop trip counts
    m_tiles, e_tiles, n_tiles = -(-p.m // mt), -(-p.e // et), -(-p.n // nt)
    f_rounds = m_tiles * -(-mt // (pp * t))
    c_chunks = -(-p.c // (qq * r))
    strips_per_tile = -(-et // e)
    s_rounds = e_tiles * -(-strips_per_tile // se)
    i_rounds = n_tiles * -(-nt // b)
    g_rounds = -(-p.g // g)
    passes = g_rounds * i_rounds * f_rounds * c_chunks * s_rounds * folds
    compute = passes * p.f * pp * qq * s_cols / rf.macs_per_cycle
    # GLB capacity: psums of the tile + one channel chunk of its ifmap rows (both already inside
    # a resident output / ifmap) + what resident values hold
    tile_rows = np.minimum(p.h, (et - 1) * p.uh + (p.r - 1) * p.dh + 1)
    psum_tile = 0 if traffic.ofmap_resident else mt * et * p.f
    ifmap_tile = 0 if traffic.ifmap_resident else qq * r * tile_rows * p.w
    fits = g * nt * (psum_tile + ifmap_tile) + traffic.held_words <= spec.glb_words
    # GLB traffic (words)
    outputs = p.outputs
    psum_w = outputs * c_chunks * folds
    psum_r = psum_w - outputs
    strips = -(-p.e // e)
    strip_rows = (p.e - strips) * p.uh + strips * ((p.r - 1) * p.dh + 1)  # incl. halo between strips
    plane = p.n * p.g * p.c * p.w
    ifmap_r = f_rounds * plane * strip_rows
    ifmap_w = 0 if traffic.ifmap_resident else m_tiles * plane * e_tiles * tile_rows  # DRAM -> GLB
    port = np.maximum.reduce([psum_r / glb.psum_read_words_per_cycle, psum_w / glb.psum_write_words_per_cycle,
                              ifmap_r / glb.ifmap_read_words_per_cycle])  # fmt: skip
    # DRAM traffic (words): filters are re-fetched per image tile and output-row tile
    dram_filter = p.weights * n_tiles * e_tiles
    dense_share = 1 - p.pad_words / (p.h * p.w)
    dram_ifmap = ifmap_w * dense_share * traffic.ifmap_ratio
    dram_ofmap = outputs * traffic.ofmap_ratio
    dram = dram_filter + dram_ifmap + dram_ofmap
    dram_wpc = spec.dram_words_per_cycle
    load = 0 if rf.filter_double_buffered else dram_filter / dram_wpc
    processing = np.maximum(compute, port) + load
    cycles = spec.transfer_cycles(processing, dram_ifmap + dram_ofmap, dram_filter)
    # array (NoC deliveries and inter-PE psum hops) and RF accesses
    cols_used = np.minimum(p.e, e * se)
    active = m["set_rows"] * r * t * g * b * cols_used
    width_used = (p.f - 1) * p.uw + (s_cols - 1) * p.dw + 1
    ifmap_deliv = passes * active * qq * width_used
    filter_deliv = dram_filter * cols_used * b
    hops = psum_w * (m["set_rows"] * r - 1)
    array = ifmap_deliv + filter_deliv + hops + psum_r
    live = 1 - (traffic.ifmap_zeros if spec.zero_gating else 0.0)
    macs = p.macs
    rf_acc = macs * (1 + 3 * live) + ifmap_deliv + filter_deliv + 2 * (hops + psum_r)
    glb_acc = ifmap_w + ifmap_r + psum_r + psum_w + outputs * (1 - traffic.ofmap_kept)
    energy_mac = macs * live * spec.mac_energy_rel
    energy_rf = rf_acc * rf.access_energy_rel
    energy_array = array * spec.array.access_energy_rel
    energy_glb = glb_acc * glb.access_energy_rel
    energy_dram = dram * spec.dram.access_energy_rel
    values = {
        "cycles": cycles, "processing_cycles": processing, "compute_cycles": compute, "port_cycles": port,
        "filter_load_cycles": load, "dram_cycles": dram / dram_wpc, "active_pes": active, "passes": passes,
        "dram_filter_words": dram_filter, "dram_ifmap_words": dram_ifmap, "dram_ofmap_words": dram_ofmap,
        "glb_ifmap_writes": ifmap_w, "glb_ifmap_reads": ifmap_r, "glb_psum_reads": psum_r,
        "glb_psum_writes": psum_w, "dram": dram, "glb": glb_acc, "array": array, "rf": rf_acc,
        "energy_mac": energy_mac, "energy_rf": energy_rf, "energy_array": energy_array,
        "energy_glb": energy_glb, "energy_dram": energy_dram,
        "energy": energy_mac + energy_rf + energy_array + energy_glb + energy_dram,
    }  # fmt: skip
    shape = pp.shape
    out = {k: np.broadcast_to(np.asarray(v, dtype=float), shape) for k, v in values.items()}
    out["fits"] = fits
    return out
