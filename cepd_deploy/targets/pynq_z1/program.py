"""Compile a (quantised) Plan into the engine's program: partition into groups (tiled on the
PE array) and vector-unit ops, place values in DDR, emit records.

>>> prog = compile_program(plan, EngineConfig(), qplan)    # doctest: +SKIP
>>> blob = prog.blob(qplan)                                # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Node, Op, PermuteAttrs, Plan, ScatterAttrs
from cepd_deploy.targets.pynq_z1.blob import (
    ARENA_RESERVED,
    HEADER_FIELDS,
    HEADER_WORDS,
    MAGIC,
    VERSION,
    Program,
    Wmem,
    allocate_arena,
)
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.fixed import POOL_SHIFT, QPlan, pool_multiplier
from cepd_deploy.targets.pynq_z1.groups import (
    ARRAY_OPS,
    Group,
    StepOp,
    make_step,
    partition,
    single,
    transposed_linear,
)
from cepd_deploy.targets.pynq_z1.isa import Kind, VecOp, record
from cepd_deploy.targets.pynq_z1.tiling import Ctx, chain, emit, epi_fields, fits, tile_group

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
    raise CEPDError(f"{node.name}: op {op.value} has no vector-unit handler")


#: How each Plan op is compiled: a step of a PE-array group (``make_step``; a SCATTER_ADD that
#: ends a CEPD layer is fused into its group's last step) or records of the vector unit.
HANDLERS: dict[Op, Callable] = {op: make_step for op in ARRAY_OPS} | {
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
    )
}


# -- the whole program -----------------------------------------------------------------------
def compile_program(
    plan: Plan, cfg: EngineConfig, q: QPlan | None = None, reuse_arena: bool = True
) -> Program:
    """Records for every Plan node (``q`` None: addresses and shapes only, for the model)."""
    if plan.input_shape[0] != 1:
        raise CEPDError("the PYNQ-Z1 engine runs one image per call: lower the model with N=1")
    items = partition(plan)
    final: list[Group | Node] = []
    for it in items:  # fused groups whose tiles cannot fit fall back to one node at a time
        if isinstance(it, Group) and len(it.steps) > 1 and not fits(cfg, it):
            final.extend(_split(it))
        else:
            final.append(it)
    arena, arena_words = allocate_arena(plan, final, reuse_arena)
    ctx = Ctx(plan, q, cfg, Wmem(q, plan), arena, {n.name: i for i, n in enumerate(plan.nodes)})
    records: list[dict] = []
    meta: list[dict] = []
    groups = []
    prev: dict | None = None
    for it in final:
        if isinstance(it, Group):
            tiling = tile_group(ctx, it)
            alt = transposed_linear(it.steps[0].node) if len(it.steps) == 1 else None
            alt_tiling = tile_group(ctx, alt) if alt is not None else None
            if alt_tiling is not None and (tiling is None or alt_tiling.cycles < tiling.cycles):
                tiling = alt_tiling
            if tiling is None:
                raise CEPDError(_no_fit(it, cfg))
            recs, m = emit(ctx, tiling)
            groups.append(tiling.info)
            prev = chain(ctx, records, meta, recs, m, tiling.group, prev)
        else:
            recs = HANDLERS[it.op](ctx, it)
            records += recs
            meta += [{"node": it.name}] * len(recs)
            prev = None
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
