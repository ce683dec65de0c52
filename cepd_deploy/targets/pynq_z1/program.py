"""Compile a (quantised) Plan into the engine's program: partition into groups (tiled on the
PE array) and vector-unit ops, place values in DDR, emit records.

>>> prog = compile_program(plan, EngineConfig(), qplan)    # doctest: +SKIP
>>> blob = prog.blob(qplan)                                # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import ActAttrs, Node, Op, PermuteAttrs, Plan, ScatterAttrs
from cepd_deploy.targets.pynq_z1.blob import (
    ARENA_RESERVED,
    HEADER_FIELDS,
    HEADER_WORDS,
    MAGIC,
    VERSION,
    Program,
    Wmem,
    allocate_arena,
    views,
)
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.fixed import ACT_FNS, POOL_SHIFT, QPlan, pool_multiplier
from cepd_deploy.targets.pynq_z1.groups import (
    ARRAY_OPS,
    Group,
    StepOp,
    chainable,
    make_step,
    merge,
    partition,
    single,
    transposed_linear,
)
from cepd_deploy.targets.pynq_z1.isa import ACT_SEGS, ActFn, Kind, VecOp, record
from cepd_deploy.targets.pynq_z1.tiling import Ctx, Tiling, chain, emit, epi_fields, fits, tile_group
from cepd_deploy.targets.pynq_z1.vector import act_table, resample_direct, resample_passes, resample_tables

__all__ = [
    "ARENA_RESERVED",
    "HEADER_FIELDS",
    "HEADER_WORDS",
    "MAGIC",
    "VERSION",
    "Program",
    "compile_program",
]


# -- vector unit -------------------------------------------------------------------------------
def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[1], math.prod(shape[2:]) if len(shape) > 2 else 1)


def _vec_records(ctx: Ctx, node: Node) -> list[dict]:
    a = ctx.arena
    c, hw = _hw(node.out_shape)
    base = record(
        Kind.VEC,
        channels=c,
        hw=hw,
        a_cstride=hw,
        out_addr=a[node.output],
        out_cstride=hw,
        node=ctx.index[node.name],
    )
    epi = epi_fields(ctx, node)
    if node.epilogue.residual:
        epi.update(e_res=a[node.inputs[-1]], e_res_pitch=hw, e_res_cstride=hw)
    op = node.op
    if op in (Op.FLATTEN, Op.RELU, Op.AFFINE, Op.PERMUTE):
        r = dict(base, vop=VecOp.COPY, a_addr=a[node.inputs[0]])
        r.update(epi)
        if op is Op.FLATTEN:
            c_in, hw_in = _hw(node.in_shapes[0])
            r.update(channels=c_in, hw=hw_in, a_cstride=hw_in, out_cstride=hw_in)
        if op is Op.PERMUTE:
            assert isinstance(node.attrs, PermuteAttrs)
            axes, perm = node.attrs.axes, node.attrs.perm
            src = np.arange(math.prod(axes)).reshape(axes).transpose(perm).reshape(-1)
            r["a_map"] = ctx.wm.table(f"{node.name}#perm", src)
        return [r]
    if op in (Op.ADD, Op.SCATTER_ADD):
        r = dict(
            base,
            vop=VecOp.ADD2,
            a_addr=a[node.inputs[0]],
            b_addr=a[node.inputs[1]],
            b_cstride=_hw(node.in_shapes[1])[1],
        )
        r.update(epi)
        if ctx.q is not None:
            r["a_shift"], r["b_shift"] = ctx.q.nodes[node.name].in_shifts
        if op is Op.SCATTER_ADD:
            cmap = np.full(c, -1)
            assert isinstance(node.attrs, ScatterAttrs)
            index = list(node.attrs.index)
            cmap[index] = np.arange(len(index))
            r["b_map"] = ctx.wm.table(f"{node.name}#map", cmap)
        return [r]
    if op is Op.GLOBAL_AVGPOOL:
        c_in, hw_in = _hw(node.in_shapes[0])
        r = dict(
            base,
            vop=VecOp.GAP,
            hw=hw_in,
            a_addr=a[node.inputs[0]],
            a_cstride=hw_in,
            out_cstride=1,
            gap_mul=pool_multiplier(hw_in),
            gap_shift=POOL_SHIFT,
        )
        r.update(epi)
        return [r]
    if op is Op.CONCAT:
        recs, off = [], 0
        shifts = ctx.q.nodes[node.name].in_shifts if ctx.q is not None else (0,) * len(node.inputs)
        for x, shape, sh in zip(node.inputs, node.in_shapes, shifts):
            ci, _ = _hw(shape)
            e = dict(e_frac=ctx.q.frac[x] if ctx.q else 0, e_out_shift=sh)
            recs.append(
                dict(base, vop=VecOp.COPY, channels=ci, a_addr=a[x], out_addr=a[node.output] + off * hw, **e)
            )
            off += ci
        return recs
    if op is Op.MUL:
        bcast = node.in_shapes[1] != node.in_shapes[0]  # (N, C, 1, 1): one b per channel
        r = dict(base, vop=VecOp.MUL, a_addr=a[node.inputs[0]], b_addr=a[node.inputs[1]],
                 b_cstride=1 if bcast else hw, b_bcast=int(bcast))  # fmt: skip
        return [r | epi]
    if op is Op.ACT:
        return [_act_record(ctx, node, base | epi)]
    if op in (Op.PAD, Op.RESIZE):
        return [_resample_record(ctx, node, base | epi)]
    if op is Op.LAYERNORM:
        nq = ctx.q.nodes[node.name] if ctx.q is not None else None
        g, eps = (nq.ln_g, nq.eps_q) if nq is not None else (0, 0)
        r = dict(base, vop=VecOp.LNORM, a_addr=a[node.inputs[0]], ln_tile=min(hw, ctx.cfg.vbuf_words // 2),
                 ln_g=g, ln_eps_lo=eps & 0x7FFFFFFF, ln_eps_hi=eps >> 31)  # fmt: skip
        return [r | epi]
    raise CEPDError(f"{node.name}: op {op.value} has no vector-unit handler")


def _act_record(ctx: Ctx, node: Node, base: dict) -> dict:
    """An activation: its function, and the table or slopes it reads from the blob."""
    assert isinstance(node.attrs, ActAttrs)
    kind = node.attrs.kind
    fn = ACT_FNS[kind]
    r = dict(base, vop=VecOp.ACT, fn=int(fn), a_addr=ctx.arena[node.inputs[0]])
    q = ctx.q
    nq = q.nodes[node.name] if q is not None else None
    f_in = q.frac[node.inputs[0]] if q is not None else 0
    if fn is ActFn.TABLE:
        t = act_table(kind, f_in, nq.f_out, q.bits) if nq is not None else None
        data = t.pairs.reshape(-1) if t is not None else np.zeros(2 * ACT_SEGS)
        r["p_addr"] = ctx.wm.table(f"{node.name}#act", data)
        if t is not None:
            r.update(t_lo=t.lo, t_shift=t.shift, t_left=int(t.left is None), t_right=int(t.right is None),
                     t_lval=t.left or 0, t_rval=t.right or 0, id_shift=t.id_shift)  # fmt: skip
    elif fn in (ActFn.HSIG, ActFn.HSWISH):
        r.update(hs_f=max(f_in, 0), hs_ush=max(f_in, 0) - f_in)
    elif kind == "prelu":
        r.update(p_addr=ctx.wm.int16(node.weights[0]), p_step=int(ctx.plan.consts[node.weights[0]].size > 1))
        r["sl_frac"] = nq.act.f_slope if nq is not None else 0
    else:  # leaky_relu: one slope for every channel
        key = f"{node.name}#alpha"
        r["p_addr"] = ctx.wm.table(key, q.qconsts[key] if q is not None else [0])
        r["sl_frac"] = nq.act.f_slope if nq is not None else 0
    return r


def _resample_record(ctx: Ctx, node: Node, base: dict) -> dict:
    """Zero padding or a resize: the row and column tables in the blob, the line buffer's use."""
    _, c, h, w = node.in_shapes[0]
    _, _, ho, wo = node.out_shape
    rows, cols = resample_tables(node)
    direct = resample_direct(rows, cols)
    words = 3 * wo + (0 if direct else w)  # the column table, and the interpolated row
    if words > ctx.cfg.vbuf_words:
        raise CEPDError(
            f"{node.name}: {node.op.value} from {w} to {wo} columns needs {words} words of the vector "
            f"unit's line buffer ({ctx.cfg.vbuf_words})"
        )
    vpass, reads = resample_passes(rows, direct)
    return dict(
        base,
        vop=VecOp.RESAMPLE,
        a_addr=ctx.arena[node.inputs[0]],
        a_cstride=h * w,
        in_h=h,
        in_w=w,
        out_h=ho,
        out_w=wo,
        p_addr=ctx.wm.table(f"{node.name}#rows", rows.reshape(-1)),
        x_addr=ctx.wm.table(f"{node.name}#cols", cols.reshape(-1)),
        rs_direct=int(direct),
        rs_vpass=vpass,
        rs_rows=reads,
    )


#: How each Plan op is compiled: a step of a PE-array group (``make_step``; a SCATTER_ADD that
#: ends a CEPD layer is fused into its group's last step), records of the vector unit, or nothing
#: (a SLICE is a view: its readers address its channels inside its input).
HANDLERS: dict[Op, Callable] = (
    {op: make_step for op in ARRAY_OPS}
    | {
        op: _vec_records
        for op in (
            Op.FLATTEN,
            Op.RELU,
            Op.AFFINE,
            Op.PERMUTE,
            Op.ADD,
            Op.SCATTER_ADD,
            Op.GLOBAL_AVGPOOL,
            Op.CONCAT,
            Op.MUL,
            Op.ACT,
            Op.PAD,
            Op.RESIZE,
            Op.LAYERNORM,
        )
    }
    | {Op.SLICE: lambda ctx, node: []}
)


# -- the whole program -----------------------------------------------------------------------
def compile_program(
    plan: Plan, cfg: EngineConfig, q: QPlan | None = None, reuse_arena: bool = True, chain_groups: bool = True
) -> Program:
    """Records for every Plan node (``q`` None: addresses and shapes only, for the model).
    ``chain_groups``: consecutive groups may run as one (:func:`choose_chains`)."""
    if plan.input_shape[0] != 1:
        raise CEPDError("the PYNQ-Z1 engine runs one image per call: lower the model with N=1")
    items = partition(plan)
    final: list[Group | Node] = []
    for it in items:  # fused groups whose tiles cannot fit fall back to one node at a time
        if isinstance(it, Group) and len(it.steps) > 1 and not fits(cfg, it):
            final.extend(_split(it))
        else:
            final.append(it)
    index = {n.name: i for i, n in enumerate(plan.nodes)}
    dry = Ctx(plan, q, cfg, Wmem(None, plan), defaultdict(int), index, views(plan))  # no addresses yet
    chosen = choose_chains(dry, final, chain_groups)
    final = [it.group if isinstance(it, Tiling) else it for it in chosen]
    arena, arena_words = allocate_arena(plan, final, reuse_arena)
    ctx = Ctx(plan, q, cfg, Wmem(q, plan), arena, index, views(plan))
    records: list[dict] = []
    meta: list[dict] = []
    groups = []
    prev: dict | None = None
    for it in chosen:
        if isinstance(it, Tiling):
            recs, m = emit(ctx, it)
            groups.append(it.info)
            prev = chain(ctx, records, meta, recs, m, it.group, prev)
        else:
            recs = HANDLERS[it.op](ctx, it)
            records += recs
            meta += [{"node": it.name}] * len(recs)
            prev = prev if not recs else None  # a view (no record) keeps the previous group's bundle open
    records.append(record(Kind.END))
    meta.append({"node": plan.nodes[-1].name})
    return Program(
        cfg,
        records,
        meta,
        ctx.wm,
        arena,
        arena_words,
        plan.input,
        plan.output,
        plan.input_shape,
        plan.output_shape,
        groups,
    )


def _tiling(ctx: Ctx, g: Group) -> Tiling | None:
    """The fastest tiling of a group (a one-image LINEAR also transposed), None if none fits."""
    tiling = tile_group(ctx, g)
    alt = transposed_linear(g.steps[0].node) if len(g.steps) == 1 else None
    alt_tiling = tile_group(ctx, alt) if alt is not None else None
    if alt_tiling is not None and (tiling is None or alt_tiling.cycles < tiling.cycles):
        return alt_tiling
    return tiling


def choose_chains(ctx: Ctx, items: list[Group | Node], enabled: bool = True) -> list[Tiling | Node]:
    """Every group tiled, consecutive groups chained on chip where the model says it pays.

    A run of groups, each :func:`chainable` into the next (a bottleneck's layers, a conv and
    its pool), is cut into the segments of least modelled cycles (each segment one merged group:
    its intermediates stay in the scratch, so only the first reads DDR and only the last writes
    it); a merged group whose tiles do not fit the buffers is not a candidate."""
    readers = ctx.plan.readers()
    out: list[Tiling | Node] = []
    i = 0
    while i < len(items):
        j = i + 1
        if enabled and isinstance(items[i], Group):
            while j < len(items) and isinstance(items[j], Group) and \
                    chainable(items[j - 1], items[j], readers, ctx.plan.output):  # fmt: skip
                j += 1
        run = items[i:j]
        if not isinstance(run[0], Group):
            out.append(run[0])
            i = j
            continue
        best: list[tuple[float, list[Tiling]] | None] = [(0.0, [])] + [None] * len(run)
        for e in range(1, len(run) + 1):
            for b in range(e):
                if best[b] is None:
                    continue
                t = _tiling(ctx, merge(run[b:e]))
                if t is None:
                    if e == b + 1:
                        raise CEPDError(_no_fit(run[b], ctx.cfg))
                    continue
                cand = (best[b][0] + t.cycles, best[b][1] + [t])
                if best[e] is None or cand[0] < best[e][0]:
                    best[e] = cand
        out += best[-1][1]
        i = j
    return out


def _split(g: Group) -> list[Group | Node]:
    """A fused group that does not fit, as its nodes run one by one through DDR."""
    out: list[Group | Node] = [single(g.subsample)] if g.subsample is not None else []
    for s in g.steps:
        out.append(single(s.node))
        if s.scatter is not None:
            out.append(s.scatter)
    return out


def _no_fit(g: Group, cfg: EngineConfig) -> str:
    s = g.steps[0]
    c, h, w = s.src_img
    if any(x.op is StepOp.MAC and x.red > cfg.red_max for x in g.steps):
        return (
            f"{g.name}: a reduction of {max(x.red for x in g.steps)} products exceeds the engine's "
            f"weight buffer ({cfg.red_max} per output channel)"
        )
    return (
        f"{g.name}: no tile of its {c}x{h}x{w} input fits the engine's buffers "
        f"(ibuf {cfg.ibuf_words}, scratch {cfg.scratch_words} words)"
    )
