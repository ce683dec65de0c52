"""Tiling of a group: tile sizes (chosen by the latency model), the on-chip layout of its
values, and its BUNDLE/LOAD/STEP records (tile t+1 loads while tile t computes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from cepd_deploy.plan.ir import Node, Op, Plan, ReluAttrs, ScatterAttrs
from cepd_deploy.targets.pynq_z1 import cycles as cost
from cepd_deploy.targets.pynq_z1.blob import Wmem, align
from cepd_deploy.targets.pynq_z1.config import EngineConfig, load_board
from cepd_deploy.targets.pynq_z1.fixed import QPlan
from cepd_deploy.targets.pynq_z1.groups import Group, Region, Step, choose_pitch, lane_shapes
from cepd_deploy.targets.pynq_z1.isa import Buf, Kind, StepOp, record


@dataclass
class Layout:
    """Where a tiling puts a group's on-chip values (words): base, row pitch and channel stride of
    each buffered value, and each step's mode (flat or a lane block of (rows, cols))."""

    base: dict[str, int]
    pitch: dict[str, int]
    cstride: dict[str, int]
    flat: list[bool]
    shape: list[tuple[int, int]]  # lane block (rows, cols) of each step
    split: int | None = None  # x spans both input halves: channels below this in half 0


def tiles_of(ho: int, wo: int, th: int, tw: int) -> list[Region]:
    """The ``th`` x ``tw`` tiles covering an ``ho`` x ``wo`` output, row by row (cut at the edges)."""
    return [
        Region(y, x, min(th, ho - y), min(tw, wo - x)) for y in range(0, ho, th) for x in range(0, wo, tw)
    ]


def _channels(g: Group, v: str) -> int:
    for s in g.steps:
        if s.src == v:
            return s.src_img[0]
        if s.dst == v:
            return s.dst_img[0]
    raise KeyError(v)


def _shape(s: Step, regs: list[dict[str, Region]], lanes: int) -> tuple[int, int]:
    """The lane block shape with the fewest blocks over the tiles of a block-mode step."""
    outs = [r[s.dst] for r in regs]
    return min(
        lane_shapes(lanes), key=lambda b: sum(math.ceil(o.h / b[0]) * math.ceil(o.w / b[1]) for o in outs)
    )


def layout(g: Group, regs: list[dict[str, Region]], cfg: EngineConfig, whole: bool = False) -> Layout | None:
    """Place the group's on-chip values for a tiling; None if a buffer overflows. ``whole``:
    x may fill both input halves (split by channels), at the price of no load overlap."""
    flat = [s.pointwise and all(r[s.src] == r[s.dst] for r in regs) for s in g.steps]
    shape = [(1, cfg.lanes) if f else _shape(s, regs, cfg.lanes) for s, f in zip(g.steps, flat)]
    base, pitch, cstride = {}, {}, {}
    scratch, split = 0, None
    born = {s.dst: k for k, s in enumerate(g.steps)}
    dies = {v: max(k for k, s in enumerate(g.steps) if v in (s.src, s.scatter_b)) for v in g.buffered}
    placed: list[tuple[int, int, int]] = []  # scratch (start, end, last step that reads it)
    for v in g.buffered:
        maxh = max(r[v].h for r in regs)
        maxw = max(r[v].w for r in regs)
        uses = [(b, s.stride) for s, f, b in zip(g.steps, flat, shape) if s.src == v and not f]
        uses += [(b, (1, 1)) for s, f, b in zip(g.steps, flat, shape) if s.scatter_b == v and not f]
        pitch[v] = choose_pitch(maxw, uses, cfg.lanes)
        cstride[v] = maxh * pitch[v]
        words = _channels(g, v) * cstride[v]
        if v == g.x:
            per_half = cfg.ibuf_words // cstride[v]
            if words > cfg.ibuf_words and not (whole and _channels(g, v) <= 2 * per_half):
                return None
            split = per_half if words > cfg.ibuf_words else None
            base[v] = 0
        else:  # first fit among the values still read at or after the step that writes v
            base[v] = 0
            for start, end in sorted((a, e) for a, e, d in placed if d >= born[v]):
                if base[v] + words <= start:
                    break
                base[v] = max(base[v], end)
            placed.append((base[v], align(base[v] + words), dies[v]))
            scratch = max(scratch, base[v] + words)
    if scratch > cfg.scratch_words:
        return None
    last = g.steps[-1]
    if max(r[last.dst].h * r[last.dst].w for r in regs) > cfg.out_px_max:
        return None
    if any(s.op is StepOp.MAC and s.red > cfg.red_max for s in g.steps):
        return None
    return Layout(base, pitch, cstride, flat, shape, split)


@dataclass
class Ctx:
    """What emitting a program's records needs: the Plan, its quantisation (None: sizes only), the
    engine, the blob's sections, the arena word address of every value in DDR and each node's
    position in the Plan."""

    plan: Plan
    q: QPlan | None
    cfg: EngineConfig
    wm: Wmem
    arena: dict[str, int]
    index: dict[str, int]  # node name -> position in the Plan
    views: dict[str, tuple[str, int]] = field(default_factory=dict)  # value -> (value it lies in, offset)


def epi_fields(ctx: Ctx, node: Node, channel_offset: int = 0) -> dict[str, int]:
    """The EPI block of a node (addresses of its scale/bias; shifts from its NodeQ)."""
    e = node.epilogue
    scale, bias = e.scale, e.bias
    if node.op in (Op.AFFINE, Op.LAYERNORM):
        scale, bias = node.weights
    f: dict[str, int] = {}
    if scale:
        f["e_scale"] = ctx.wm.int16(scale) + channel_offset
    if bias:
        f["e_bias"] = ctx.wm.int32(bias) + 2 * channel_offset
    if ctx.q is not None:
        eq = ctx.q.nodes[node.name].epi
        f.update(
            e_norm=eq.norm,
            e_bias_shift=eq.bias_shift,
            e_res_shift=eq.res_shift,
            e_act=int(eq.act),
            e_frac=eq.frac,
            e_out_shift=eq.out_shift,
        )
    elif node.op is Op.RELU:
        assert isinstance(node.attrs, ReluAttrs)
        f["e_act"] = 2 if node.attrs.max == 6.0 else 1
    return f


def _image_words(img: tuple[int, int, int]) -> int:
    return img[0] * img[1] * img[2]


def _group_records(ctx: Ctx, g: Group, tiles: list[Region], lay: Layout) -> tuple[list[dict], list[dict]]:
    """BUNDLE/LOAD/STEP records of a group: tile t loads while tile t-1 computes."""
    s_img, (sy, sx) = g.src_img, g.load_step
    o_img = g.out_img
    per_tile: list[tuple[list[dict], list[dict]]] = []
    for img in range(g.images):
        for tile in tiles:
            regs = g.regions(tile)
            rx = regs[g.x]
            half = len(per_tile) % 2
            base = ctx.wm.int16_transposed(g.steps[0].node.weights[0]) if g.from_blob else ctx.arena[g.src]
            src = base + img * _image_words(s_img) + rx.y0 * sy * s_img[2] + rx.x0 * sx
            load = dict(
                src_mem=int(g.from_blob),
                src=src,
                src_cstride=s_img[1] * s_img[2],
                src_pitch=s_img[2] * sy,
                col_step=sx,
                rows=rx.h,
                cols=rx.w,
                dst=0,
                dst_pitch=lay.pitch[g.x],
                dst_cstride=lay.cstride[g.x],
            )
            if lay.split is None:
                loads = [record(Kind.LOAD, half=half, channels=s_img[0], **load)]
            else:
                c1, c = lay.split, s_img[0]
                loads = [
                    record(Kind.LOAD, half=0, channels=c1, **load),
                    record(
                        Kind.LOAD, half=1, channels=c - c1, **dict(load, src=src + c1 * load["src_cstride"])
                    ),
                ]
            steps = [_step_record(ctx, g, k, regs, lay, img, o_img, half) for k in range(len(g.steps))]
            per_tile.append((loads, steps))
    recs: list[dict] = []
    meta: list[dict] = []
    first = g.steps[0].node.name

    def bundle(loads: list[dict], comps: list[dict], parity: int) -> None:
        recs.append(record(Kind.BUNDLE, n_load=len(loads), n_comp=len(comps), parity=parity))
        meta.append({"node": first})
        recs.extend(loads + comps)
        meta.extend([{"node": first}] * len(loads) + [{"node": c["_node"]} for c in comps])

    n = len(per_tile)
    if lay.split is not None:  # both halves hold one tile: load each half, then compute
        for loads, comps in per_tile:
            bundle(loads[:1], [], 0)
            bundle(loads[1:], [], 1)
            bundle([], comps, 0)
    else:  # ping-pong: tile k loads into half k % 2 while tile k-1 computes from the other
        for k in range(n + 1):
            bundle(per_tile[k][0] if k < n else [], per_tile[k - 1][1] if k > 0 else [], k % 2)
    for r in recs:
        r.pop("_node", None)
    return recs, meta


def _step_record(
    ctx: Ctx,
    g: Group,
    k: int,
    regs: dict[str, Region],
    lay: Layout,
    img: int,
    o_img: tuple[int, int, int],
    half: int,
) -> dict:
    s = g.steps[k]
    src, out = regs[s.src], regs[s.dst]
    r = record(
        Kind.STEP,
        op=int(s.op),
        flat=int(lay.flat[k]),
        bh=lay.shape[k][0],
        bw=lay.shape[k][1],
        src_half=half,
        src_split=-1 if lay.split is None or s.src != g.x else lay.split,
        src_buf=int(Buf.IBUF if s.src == g.x else Buf.SCRATCH),
        src_base=lay.base[s.src],
        src_pitch=lay.pitch[s.src],
        src_cstride=lay.cstride[s.src],
        src_y0=src.y0,
        src_x0=src.x0,
        in_h=s.src_img[1],
        in_w=s.src_img[2],
        oy0=out.y0,
        ox0=out.x0,
        oh=out.h,
        ow=out.w,
        groups=s.groups,
        cin_g=s.cin_g,
        cout_g=s.cout_g,
        kh=s.kernel[0],
        kw=s.kernel[1],
        sh=s.stride[0],
        sw=s.stride[1],
        ph=s.padding[0],
        pw=s.padding[1],
        dh=s.dilation[0],
        dw=s.dilation[1],
        node=ctx.index[s.node.name],
    )
    if s.dst == g.out:
        r.update(
            dst_buf=int(Buf.DDR),
            dst_pitch=o_img[2],
            dst_cstride=o_img[1] * o_img[2],
            dst_base=ctx.arena[g.out] + img * _image_words(o_img) + out.y0 * o_img[2] + out.x0,
        )
    else:
        r.update(
            dst_buf=int(Buf.SCRATCH),
            dst_base=lay.base[s.dst],
            dst_pitch=lay.pitch[s.dst],
            dst_cstride=lay.cstride[s.dst],
        )
    if s.transposed:  # the input vector is the weights of one output channel; bias per pixel
        r.update(w_addr=ctx.arena[s.node.inputs[0]], w_mem=1, bias_px=1)
    elif s.op is StepOp.MAC:
        r["w_addr"] = ctx.wm.int16(s.node.weights[0])
    owner = s.scatter or s.node
    r.update(epi_fields(ctx, owner, img * o_img[0]))
    if owner.epilogue.residual:
        r.update(
            e_res=ctx.arena[g.residual] + img * _image_words(o_img) + out.y0 * o_img[2] + out.x0,
            e_res_pitch=o_img[2],
            e_res_cstride=o_img[1] * o_img[2],
        )
    if s.scatter is not None:
        b = s.scatter_b
        cmap = np.full(s.dst_img[0], -1)  # the step's own channels (a chain's last step need not be it)
        assert isinstance(s.scatter.attrs, ScatterAttrs)
        index = list(s.scatter.attrs.index)
        cmap[index] = np.arange(len(index))
        r.update(
            sc_map=ctx.wm.table(f"{s.scatter.name}#map", cmap),
            sc_base=lay.base[b],
            sc_pitch=lay.pitch[b],
            sc_cstride=lay.cstride[b],
        )
        if ctx.q is not None:
            sa, sb = ctx.q.nodes[s.scatter.name].in_shifts
            last = ctx.q.nodes[s.node.name].epi  # what the step alone would do: norm, then out_shift
            r.update(sc_a_norm=last.norm, sc_a_out=last.out_shift, sc_a_shift=sa, sc_b_shift=sb)
    r["_node"] = s.node.name  # for the metadata; not encoded
    return r


#: tile counts tried along one dimension (beyond these the per-tile overheads dominate)
_SPLITS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)


def _heights(ho: int, block: int) -> list[int]:
    """Tile heights tried: even splits and multiples of the lane block height."""
    return sorted(
        {min(ho, math.ceil(ho / n)) for n in _SPLITS} | {h for h in range(block, ho, block) if ho / h <= 64}
    )


def _widths(wo: int, ho: int, cfg: EngineConfig) -> list[int]:
    """Tile widths tried, widest first: one-row images split into runs of pixels (whole lane
    blocks, or even splits); 2-D images full width, else multiples of the block width."""
    if ho == 1:
        lanes = cfg.lanes
        widths = {min(wo, math.ceil(wo / n / lanes) * lanes) for n in _SPLITS} | {
            math.ceil(wo / n) for n in _SPLITS
        }
        return sorted(widths, reverse=True)
    return [wo] + [w for w in range(cfg.block * (wo // cfg.block), 0, -cfg.block) if w < wo]


@dataclass
class Tiling:
    """The chosen tiling of a group and its modelled cycles (before ``emit``)."""

    group: Group
    tiles: list[Region]
    layout: Layout
    cycles: float
    info: dict


def tile_group(ctx: Ctx, g: Group) -> Tiling | None:
    """The fastest tiling of a group by the model, or None if no tile fits the buffers.
    Candidates are costed on one folded image (every image repeats the same records) and on a
    scratch weight layout, so nothing is placed in the blob until ``emit``."""
    _, ho, wo = g.out_img
    board = load_board()
    dry = replace(ctx, wm=Wmem(None, ctx.plan))
    one = replace(g, images=1) if g.images > 1 else g
    best = None
    for tw in _widths(wo, ho, ctx.cfg):
        for th in _heights(ho, ctx.cfg.block):
            tiles = tiles_of(ho, wo, th, tw)
            regs = [g.regions(t) for t in tiles]
            lay = layout(g, regs, ctx.cfg)  # ping-pong halves; else both halves for one tile
            whole = lay is None
            lay = lay or layout(g, regs, ctx.cfg, whole=True)
            if lay is None:
                continue
            recs, _ = _group_records(dry, one, tiles, lay)
            costs = cost.record_costs(recs, ctx.cfg, board)
            cycles = g.images * sum(c.cycles for c in costs)
            if not whole and len(tiles) > 1:  # the first tile's load usually hides behind the
                # previous group (``chain``); never a single tile's, which reads its whole input
                cycles -= sum(c.cycles for c in costs[: 1 + recs[0]["n_load"]])
            if best is None or cycles < best.cycles:
                info = {"name": g.name, "tile": [th, tw], "tiles": len(tiles) * g.images}
                info |= {"steps": len(g.steps), "flat": lay.flat, "whole_ibuf": whole}
                best = Tiling(g, tiles, lay, cycles, info)
        if best is not None and ho > 1:
            break  # full-width (or the widest fitting) tiles win over narrower ones
    return best


def emit(ctx: Ctx, t: Tiling) -> tuple[list[dict], list[dict]]:
    """The records (and their metadata) of a chosen tiling; places its weights in the blob."""
    return _group_records(ctx, t.group, t.tiles, t.layout)


def _flip_halves(recs: list[dict]) -> None:
    for r in recs:
        if r["kind"] == Kind.BUNDLE:
            r["parity"] ^= 1
        elif r["kind"] == Kind.LOAD:
            r["half"] ^= 1
        elif r["kind"] == Kind.STEP and r["src_buf"] == Buf.IBUF and r["src_split"] < 0:
            r["src_half"] ^= 1


def chain(
    ctx: Ctx,
    records: list[dict],
    meta: list[dict],
    recs: list[dict],
    m: list[dict],
    g: Group,
    prev: dict | None,
) -> dict | None:
    """Append a group's records; its first tile's load joins the previous group's last
    (compute-only) bundle when that is safe: the two use different input halves, and the rows
    it reads were written by earlier tiles (or by an earlier item). Returns what the next group
    needs to know."""
    n_load = recs[0]["n_load"]
    loads = recs[1 : 1 + n_load]
    whole = any(r["kind"] == Kind.STEP and r["src_split"] >= 0 for r in recs)
    if prev is not None and not whole and recs[0]["n_comp"] == 0 and g.images == 1:
        src = ctx.views.get(g.src, (g.src, 0))[0]  # a view (SLICE) reads the value it lies in
        start = loads[0]["src"] - (0 if g.from_blob else ctx.arena[g.src])  # the same pixels
        end = (
            start
            + (loads[0]["rows"] - 1) * loads[0]["src_pitch"]
            + (loads[0]["cols"] - 1) * loads[0]["col_step"]
            + 1
        )
        if g.from_blob or src != prev["out"] or end <= prev["last_start"]:
            if prev["half"] == loads[0]["half"]:
                _flip_halves(recs)
            head = records[prev["bundle"]]
            head.update(n_load=n_load, parity=loads[0]["half"])
            records[prev["bundle"] + 1 : prev["bundle"] + 1] = loads
            meta[prev["bundle"] + 1 : prev["bundle"] + 1] = m[1 : 1 + n_load]
            recs, m = recs[1 + n_load :], m[1 + n_load :]
    base = len(records)
    records += recs
    meta += m
    if whole or g.images != 1:
        return None
    last = max(i for i, r in enumerate(recs) if r["kind"] == Kind.BUNDLE)
    steps = [r for r in recs[last:] if r["kind"] == Kind.STEP]
    final = steps[-1]
    return {
        "bundle": base + last,
        "half": steps[0]["src_half"],
        "out": g.out,
        "last_start": final["dst_base"] - ctx.arena[g.out],
    }


def fits(cfg: EngineConfig, g: Group) -> bool:
    """Whether the smallest tiles of a group fit the buffers (an interior tile is the largest)."""
    _, ho, wo = g.out_img
    for th in (1, cfg.block):
        for tw in (1, cfg.block):
            tiles = tiles_of(ho, wo, min(th, ho), min(tw, wo))
            sample = {tiles[0], tiles[len(tiles) // 2], tiles[-1]}
            if layout(g, [g.regions(t) for t in sample], cfg, whole=True) is not None:
                return True
    return False
