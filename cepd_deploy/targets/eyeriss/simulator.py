"""The simulator: every Plan op -> a :class:`LayerResult`, through a table op -> handler.

Ops run one after another, each reading its inputs from DRAM and writing its output back (the
chip's layer-by-layer schedule), with the two fusions of :mod:`.schedule`. Weighted ops (CONV,
MATMUL, LINEAR) go through the row-stationary mapper; everything else is a memory-bound pass
through the GLB with a few ALU operations per output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.cost import node_macs
from cepd_deploy.plan.ir import Node, Op, Plan, PoolAttrs
from cepd_deploy.targets.eyeriss.mapper import Traffic, search
from cepd_deploy.targets.eyeriss.problem import conv_problem
from cepd_deploy.targets.eyeriss.result import LayerResult, SimResult
from cepd_deploy.targets.eyeriss.schedule import (
    DEFAULT_ZEROS,
    OBJECTIVES,
    fused_values,
    siblings,
    zero_fractions,
)
from cepd_deploy.targets.eyeriss.spec import Spec, load_spec

KINDS = {
    Op.CONV: "conv", Op.MATMUL: "conv1x1", Op.LINEAR: "fc", Op.MAXPOOL: "pool", Op.AVGPOOL: "pool",
    Op.GLOBAL_AVGPOOL: "pool", Op.SCATTER_ADD: "scatter", Op.PERMUTE: "permute", Op.ADD: "eltwise",
    Op.RELU: "eltwise", Op.AFFINE: "eltwise", Op.CONCAT: "view", Op.FLATTEN: "view",
}  # fmt: skip


@dataclass
class Context:
    """What a handler needs beyond its node."""

    plan: Plan
    spec: Spec
    objective: str
    batch: int
    zeros: dict[str, float]  # value -> zero fraction
    on_chip: frozenset[str]  # values that never go to DRAM
    groups: dict[str, tuple[str, ...]]  # node -> the sibling nodes it runs with
    nodes: dict[str, Node] = field(default_factory=dict)
    done: dict[str, LayerResult] = field(default_factory=dict)  # by output value

    def size(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * self.batch

    def ratio(self, value: str) -> float:
        """DRAM words per element of a value (RLC of its zeros; 0 when it stays on chip)."""
        if value in self.on_chip:
            return 0.0
        return rlc_ratio(self.zeros.get(value, 0.0), self.spec)


def rlc_ratio(zeros: float, spec: Spec) -> float:
    """DRAM words per value under Eyeriss's run-length code: (5-bit run, level) pairs packed into
    64-bit words; a run longer than 31 zeros costs an extra pair. Never worse than raw."""
    if spec.dram.compression == "none" or zeros <= 0:
        return 1.0
    pair_bits = 5 + spec.word_bits
    per_word = max(1, 63 // pair_bits)
    pairs = (1 - zeros) + zeros / 32
    return min(1.0, pairs * 64 / per_word / spec.word_bits)


Handler = Callable[[Node, Context], LayerResult]


def _row(node: Node, ctx: Context, *, macs: int, cycles: float, processing: float, active: int,
         dram: float, glb: float, array: float, rf: float, ops: float, mapping: dict | None = None,
         energy: dict | None = None) -> LayerResult:  # fmt: skip
    spec = ctx.spec
    if energy is None:
        energy = {
            "dram": dram * spec.dram.access_energy_rel,
            "glb": glb * spec.glb.access_energy_rel,
            "array": array * spec.array.access_energy_rel,
            "rf": rf * spec.rf.access_energy_rel,
            "mac": ops * spec.mac_energy_rel,
        }
    return LayerResult(
        node.name, node.layer or node.name, KINDS[node.op], node.op.value, macs, cycles, processing,
        int(round(active)), dram * spec.word_bytes, {"dram": dram, "glb": glb, "array": array, "rf": rf},
        energy, mapping, spec.clock_mhz, spec.pes,
    )  # fmt: skip


def _epilogue(node: Node, ctx: Context) -> tuple[float, float, float]:
    """(ALU ops, residual words, residual DRAM words) of a node's epilogue. ReLU is free on the
    output path; a residual is read into the GLB and fed to the PEs as initial psums."""
    e, out = node.epilogue, ctx.size(node.out_shape)
    ops = out * (bool(e.scale) + bool(e.bias) + e.residual)
    if not e.residual:
        return ops, 0.0, 0.0
    return ops, float(out), out * ctx.ratio(node.inputs[-1])


def _weighted(node: Node, ctx: Context) -> LayerResult:
    spec = ctx.spec
    group = [ctx.nodes[x] for x in ctx.groups.get(node.name, (node.name,))]
    problems = [conv_problem(x) for x in group]
    problem = replace(problems[0], n=problems[0].n * ctx.batch, m=sum(p.m for p in problems))
    share = conv_problem(node).m / problem.m
    src = node.data_inputs[0]
    out_ratio = sum(ctx.ratio(x.output) * p.m for x, p in zip(group, problems)) / problem.m
    traffic = Traffic(ctx.ratio(src), out_ratio, ctx.zeros.get(src, 0.0))
    mapping, c = search(problem, spec, ctx.objective, traffic)
    c = {k: v * share for k, v in c.items()}  # siblings split the stacked conv by filters
    ops, res, res_dram = _epilogue(node, ctx)
    port = max(c["port_cycles"], (c["glb_psum_reads"] + res) / spec.glb.psum_read_words_per_cycle)
    processing = max(c["compute_cycles"], port) + c["filter_load_cycles"]
    activations = c["dram_ifmap_words"] + c["dram_ofmap_words"] + res_dram
    cycles = float(spec.transfer_cycles(processing, activations, c["dram_filter_words"]))
    dram, glb = c["dram"] + res_dram, c["glb"] + 2 * res
    energy = {
        "dram": c["energy_dram"] + res_dram * spec.dram.access_energy_rel,
        "glb": c["energy_glb"] + 2 * res * spec.glb.access_energy_rel,
        "array": c["energy_array"],
        "rf": c["energy_rf"],
        "mac": c["energy_mac"] + ops * spec.mac_energy_rel,
    }
    info = mapping.as_dict()
    dram_cycles = (activations + c["dram_filter_words"]) / spec.dram_words_per_cycle
    info.update(
        compute_cycles=round(c["compute_cycles"]),
        glb_port_cycles=round(port),
        filter_load_cycles=round(c["filter_load_cycles"]),
        dram_cycles=round(dram_cycles),
    )
    if len(group) > 1:
        info["stacked_with"] = [x.name for x in group if x is not node]
    row = _row(node, ctx, macs=node_macs(node) * ctx.batch, cycles=cycles, processing=processing,
               active=c["active_pes"] / share, dram=dram, glb=glb, array=c["array"], rf=c["rf"],
               ops=0, mapping=info, energy=energy)  # fmt: skip
    streams = ("ifmap_writes", "ifmap_reads", "psum_reads", "psum_writes")
    row.extra["glb_words"] = {k: round(c[f"glb_{k}"]) for k in streams}
    words = (c["dram_filter_words"], c["dram_ifmap_words"], c["dram_ofmap_words"], res_dram)
    row.extra["dram_words"] = {k: round(v) for k, v in zip(("filters", "ifmap", "ofmap", "residual"), words)}
    return row


def _pass(node: Node, ctx: Context, ops_per_output: float) -> LayerResult:
    """A memory-bound pass: inputs DRAM -> GLB -> PEs (a few ALU ops each) -> GLB -> DRAM.

    An input that stays on chip (a fused scatter's dense part) is already in the GLB as psums:
    the other inputs and a residual are read into the PEs as initial psums, and only the result
    leaves for DRAM."""
    spec, glb_spec = ctx.spec, ctx.spec.glb
    shapes = dict(zip(node.inputs, node.in_shapes))
    inputs = node.data_inputs
    fused = any(x in ctx.on_chip for x in inputs)
    raw_in = sum(ctx.size(shapes[x]) for x in inputs if x not in ctx.on_chip)
    dram_in = sum(ctx.size(shapes[x]) * ctx.ratio(x) for x in inputs)
    out = ctx.size(node.out_shape)
    ep_ops, res, res_dram = _epilogue(node, ctx)
    dram = dram_in + res_dram + out * ctx.ratio(node.output)
    to_pes = raw_in + res  # GLB -> PE reads
    from_pes = 0 if fused else out  # PE -> GLB writes (a fused result is already there)
    glb = 2 * to_pes + from_pes + out  # + DRAM-side writes of the inputs, reads of the result
    ops = out * ops_per_output + ep_ops
    if fused:  # the preload shares the producer's psum read port: only time beyond it counts
        prod = next(ctx.done[x] for x in inputs if x in ctx.on_chip)
        busy = prod.extra["glb_words"]["psum_reads"] + to_pes
        processing = max(0.0, busy / glb_spec.psum_read_words_per_cycle - prod.processing_cycles)
    else:
        compute = ops / (spec.pes * spec.rf.macs_per_cycle)
        processing = max(compute, to_pes / glb_spec.ifmap_read_words_per_cycle,
                         from_pes / glb_spec.psum_write_words_per_cycle)  # fmt: skip
    cycles = float(spec.transfer_cycles(processing, dram))
    active = min(spec.pes, out) if ops else 0
    return _row(node, ctx, macs=0, cycles=cycles, processing=processing, active=active, dram=dram,
                glb=glb, array=to_pes + from_pes, rf=3 * ops, ops=ops)  # fmt: skip


def _pool(node: Node, ctx: Context) -> LayerResult:
    if node.op is Op.GLOBAL_AVGPOOL:
        return _pass(node, ctx, math.prod(node.in_shapes[0][2:]))
    assert isinstance(node.attrs, PoolAttrs)
    kh, kw = node.attrs.kernel
    return _pass(node, ctx, kh * kw)


def _scatter_add(node: Node, ctx: Context) -> LayerResult:
    """``out = a; out[:, index] += b``: with ``a`` in the GLB only ``b`` moves in (as initial psums)."""
    return _pass(node, ctx, node.in_shapes[1][1] / node.out_shape[1])


def _view(node: Node, ctx: Context) -> LayerResult:
    """CONCAT and FLATTEN are address arithmetic: producers write straight into the joined layout."""
    return _row(node, ctx, macs=0, cycles=0.0, processing=0.0, active=0, dram=0.0, glb=0.0, array=0.0,
                rf=0.0, ops=0)  # fmt: skip


HANDLERS: dict[Op, Handler] = {
    Op.CONV: _weighted,
    Op.MATMUL: _weighted,
    Op.LINEAR: _weighted,
    Op.AFFINE: lambda node, ctx: _pass(node, ctx, 2),
    Op.PERMUTE: lambda node, ctx: _pass(node, ctx, 0),
    Op.SCATTER_ADD: _scatter_add,
    Op.CONCAT: _view,
    Op.FLATTEN: _view,
    Op.ADD: lambda node, ctx: _pass(node, ctx, 1),
    Op.RELU: lambda node, ctx: _pass(node, ctx, 1),
    Op.MAXPOOL: _pool,
    Op.AVGPOOL: _pool,
    Op.GLOBAL_AVGPOOL: _pool,
}


def simulate(
    plan: Plan,
    spec: Spec | str | None = None,
    *,
    batch: int = 1,
    objective: str = "latency",
    zeros: float | Mapping[str, float] = DEFAULT_ZEROS,
) -> SimResult:
    """Map every op of ``plan`` onto the accelerator and return per-op and total cost.

    ``batch`` multiplies the Plan's own batch (lower with N images, or with 1 and pass N).
    ``zeros`` is the fraction of zeros in ReLU outputs (DRAM compression and zero gating).

    >>> plan = lower(build_model("alexnet"), (4, 3, 227, 227))    # doctest: +SKIP
    >>> simulate(plan, load_spec("eyeriss_v1")).totals["latency_ms"]  # doctest: +SKIP
    """
    if objective not in OBJECTIVES:
        raise CEPDError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CEPDError(f"batch must be a positive integer, got {batch!r}")
    spec = load_spec(spec)
    ctx = Context(plan, spec, objective, batch, zero_fractions(plan, zeros), fused_values(plan),
                  siblings(plan), {n.name: n for n in plan.nodes})  # fmt: skip
    rows = []
    for node in plan.nodes:
        handler = HANDLERS.get(node.op)
        if handler is None:
            raise CEPDError(f"eyeriss: op {node.op.value} ({node.name}) is not supported")
        rows.append(handler(node, ctx))
        ctx.done[node.output] = rows[-1]
    return SimResult(spec, batch * plan.input_shape[0], objective, rows)
