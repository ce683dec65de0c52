"""The simulator: every Plan op -> a :class:`LayerResult`, through a table op -> handler.

Ops run one after another, each reading its inputs from DRAM and writing its output back (the
chip's layer-by-layer schedule), with the fusions of :mod:`.schedule`, and a CEPD block's TT
chain kept in the GLB where its intermediates fit (:func:`chain_residency`). A fused scatter's
DRAM streams overlap its producer's processing when the spec overlaps transfers. Weighted ops (CONV,
MATMUL, LINEAR) go through the row-stationary mapper; everything else is a memory-bound pass
through the GLB with a few ALU operations per output, moving the data it really touches:

* ACT: the input in, the output out, :data:`ACT_OPS` ALU operations per output (or fused into
  its producer's output path: ALU operations only); MUL: both operands in (a fused broadcast
  MUL loads only its vector); SLICE: the channels it keeps; PAD: the input in, the padded output
  out (the border is generated on chip); RESIZE: the source rows x columns it samples in, one
  (nearest) or four (bilinear) GLB reads per output; LAYERNORM: the input from DRAM once, from the
  GLB twice (statistics, then normalise: a position's channels stay in the GLB between the two;
  a position wider than the GLB is read from DRAM twice); pooling: the input pixels its windows
  cover (a strided 1x1 subsampling reads a quarter of its input).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.cost import node_macs
from cepd_deploy.plan.ir import WEIGHTED, Node, Op, Plan, PoolAttrs, ResizeAttrs
from cepd_deploy.targets.eyeriss.mapper import TIE, Traffic, search
from cepd_deploy.targets.eyeriss.problem import ConvProblem, conv_problem
from cepd_deploy.targets.eyeriss.result import LayerResult, SimResult
from cepd_deploy.targets.eyeriss.schedule import (
    DEFAULT_ZEROS,
    OBJECTIVES,
    fused_values,
    output_fusions,
    siblings,
    zero_fractions,
)
from cepd_deploy.targets.eyeriss.spec import Spec, load_spec

KINDS = {
    Op.CONV: "conv", Op.MATMUL: "conv1x1", Op.LINEAR: "fc", Op.MAXPOOL: "pool", Op.AVGPOOL: "pool",
    Op.GLOBAL_AVGPOOL: "pool", Op.SCATTER_ADD: "scatter", Op.PERMUTE: "permute", Op.ADD: "eltwise",
    Op.RELU: "eltwise", Op.AFFINE: "eltwise", Op.CONCAT: "view", Op.FLATTEN: "view", Op.ACT: "eltwise",
    Op.MUL: "eltwise", Op.SLICE: "copy", Op.PAD: "copy", Op.RESIZE: "resize", Op.LAYERNORM: "norm",
}  # fmt: skip
#: ALU operations per output of each activation: leaky/PReLU a compare and a multiply; the hard
#: ones a multiply-add and a clamp (hardswish one more multiply); sigmoid and tanh a table lookup
#: with linear interpolation; SiLU and GELU that times x
ACT_OPS = {"leaky_relu": 1, "prelu": 1, "hardsigmoid": 2, "hardswish": 3, "sigmoid": 3, "tanh": 3,
           "silu": 4, "gelu": 4}  # fmt: skip
#: LAYERNORM ALU operations: per element sum and sum of squares (2), then (x - mean) * rstd * scale
#: + shift (3); per position mean, variance and the reciprocal square root (4)
NORM_OPS_PER_ELEMENT, NORM_OPS_PER_POSITION = 5, 4


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
    fused_into: dict[str, str] = field(default_factory=dict)  # output-path fusions: node -> producer
    written: dict[str, str] = field(default_factory=dict)  # value -> the fused value written instead
    resident: frozenset[str] = frozenset()  # TT chain intermediates kept in the GLB

    def size(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * self.batch

    def ratio(self, value: str) -> float:
        """DRAM words per element of a value (RLC of its zeros; 0 when it stays on chip)."""
        if value in self.on_chip or value in self.resident:
            return 0.0
        return rlc_ratio(self.zeros.get(value, 0.0), self.spec)

    def out_ratio(self, value: str) -> float:
        """DRAM words per element its producer writes (the final value of any output-path fusion)."""
        return 0.0 if value in self.on_chip else self.ratio(self.written.get(value, value))


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


def _stacked(node: Node, ctx: Context, resident: frozenset[str]) -> tuple[list[Node], ConvProblem, Traffic]:
    """The conv a weighted node runs as (stacked with its siblings) and its DRAM/GLB traffic when
    the values in ``resident`` stay in the GLB."""
    group = [ctx.nodes[x] for x in ctx.groups.get(node.name, (node.name,))]
    problems = [conv_problem(x) for x in group]
    problem = replace(problems[0], n=problems[0].n * ctx.batch, m=sum(p.m for p in problems))
    src = node.data_inputs[0]
    in_glb = src in resident
    out_ratio = sum(0.0 if x.output in resident else ctx.out_ratio(x.output) * p.m
                    for x, p in zip(group, problems)) / problem.m  # fmt: skip
    kept = sum(p.m for x, p in zip(group, problems) if x.output in resident or x.output in ctx.on_chip)
    held = sum(ctx.size(x.out_shape) for x in group if x.output in resident)
    if in_glb:
        held += ctx.size(node.in_shapes[0])
    traffic = Traffic(0.0 if in_glb else ctx.ratio(src), out_ratio, ctx.zeros.get(src, 0.0), kept / problem.m,
                      in_glb, all(x.output in resident for x in group), held)  # fmt: skip
    return group, problem, traffic


def _weighted(node: Node, ctx: Context) -> LayerResult:
    spec = ctx.spec
    group, problem, traffic = _stacked(node, ctx, ctx.resident)
    share = conv_problem(node).m / problem.m
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
    chained = [k for k, v in (("ifmap", node.data_inputs[0]), ("ofmap", node.output)) if v in ctx.resident]
    if chained:
        info["in_glb"] = chained  # a TT chain's intermediate kept in the GLB (no DRAM round trip)
    row = _row(node, ctx, macs=node_macs(node) * ctx.batch, cycles=cycles, processing=processing,
               active=c["active_pes"] / share, dram=dram, glb=glb, array=c["array"], rf=c["rf"],
               ops=0, mapping=info, energy=energy)  # fmt: skip
    streams = ("ifmap_writes", "ifmap_reads", "psum_reads", "psum_writes")
    row.extra["glb_words"] = {k: round(c[f"glb_{k}"]) for k in streams}
    words = (c["dram_filter_words"], c["dram_ifmap_words"], c["dram_ofmap_words"], res_dram)
    row.extra["dram_words"] = {k: round(v) for k, v in zip(("filters", "ifmap", "ofmap", "residual"), words)}
    return row


def chain_residency(ctx: Context) -> frozenset[str]:
    """The TT chain intermediates to keep in the GLB. In each CEPD block, the candidates are the
    values a weighted step writes for the next step alone to read, right after it, that fit the
    GLB (a step stacked with another block's op keeps its output in DRAM); every subset
    of them is costed (each step it touches mapped again, the resident values holding their GLB
    space for the whole step) and the best for the objective kept (within :data:`.mapper.TIE` of
    it, the other measure decides, then the most resident values)."""
    count, chosen = ctx.plan.readers(), set()
    order = {n.name: i for i, n in enumerate(ctx.plan.nodes)}
    first, second = ("cycles", "energy") if ctx.objective == "latency" else ("energy", "cycles")
    for block in ctx.plan.blocks():
        steps, mine = block.steps, {n.name for n in block.nodes}
        # the consumer runs right after the producer (nothing else needs the GLB meanwhile), and
        # the producer is not stacked with another block's op
        edges = [a.output for a, b in zip(steps, steps[1:])
                 if a.op in WEIGHTED and b.op in WEIGHTED and b.data_inputs[0] == a.output
                 and order[b.name] == order[a.name] + 1 and set(ctx.groups.get(a.name, ())) <= mine
                 and count[a.output] == 1 and a.output not in ctx.on_chip
                 and ctx.size(a.out_shape) <= ctx.spec.glb_words]  # fmt: skip
        touched = [n for n in steps if n.output in edges or (n.inputs and n.inputs[0] in edges)]
        options = []
        for keep in itertools.product((False, True), repeat=len(edges)):
            resident = frozenset(v for v, k in zip(edges, keep) if k)
            cost = [0.0, 0.0]
            for node in touched:
                _, problem, traffic = _stacked(node, ctx, resident)
                try:
                    _, c = search(problem, ctx.spec, ctx.objective, traffic)
                except CEPDError:  # the resident values leave this step no room
                    break
                cost = [cost[0] + c[first], cost[1] + c[second]]
            else:
                options.append((cost[0], cost[1], -len(resident), resident))
        if options:
            best = min(o[0] for o in options)
            chosen |= min((o for o in options if o[0] <= best * (1 + TIE)), key=lambda o: o[1:3])[3]
    return frozenset(chosen)


def _pass(node: Node, ctx: Context, ops_per_output: float, const_words: float = 0.0) -> LayerResult:
    """A memory-bound pass: inputs DRAM -> GLB -> PEs (a few ALU ops each) -> GLB -> DRAM.

    An input that stays on chip (a fused scatter's dense part) is already in the GLB as psums:
    the other inputs and a residual are read into the PEs as initial psums, and only the result
    leaves for DRAM."""
    shapes = dict(zip(node.inputs, node.in_shapes))
    inputs = node.data_inputs
    fused = any(x in ctx.on_chip for x in inputs)
    raw_in = sum(ctx.size(shapes[x]) for x in inputs if x not in ctx.on_chip)
    dram_in = sum(ctx.size(shapes[x]) * ctx.ratio(x) for x in inputs)
    out = ctx.size(node.out_shape)
    ep_ops, res, res_dram = _epilogue(node, ctx)
    to_pes = raw_in + res  # GLB -> PE reads
    return _stream(node, ctx, dram_in=dram_in + res_dram, glb_in=to_pes, to_pes=to_pes,
                   from_pes=0 if fused else out, ops=out * ops_per_output + ep_ops, const_words=const_words,
                   preload=fused)  # fmt: skip


def _stream(node: Node, ctx: Context, *, dram_in: float, glb_in: float, to_pes: float, from_pes: float,
            ops: float, const_words: float = 0.0, preload: bool = False) -> LayerResult:  # fmt: skip
    """The cost of a pass that reads ``dram_in`` DRAM words (``glb_in`` words once in the GLB),
    sends ``to_pes`` words to the PEs and ``from_pes`` results back, runs ``ops`` ALU operations
    and writes its output to DRAM; ``const_words`` (per-channel constants) go from DRAM straight
    into the scratchpads, like filters. With ``preload`` (a fused scatter) the reads share the
    producer's psum read port and only the time beyond the producer's counts."""
    spec, glb_spec = ctx.spec, ctx.spec.glb
    out = ctx.size(node.out_shape)
    dram = dram_in + out * ctx.out_ratio(node.output) + const_words
    glb = glb_in + to_pes + from_pes + out  # + the DRAM-side read of the result
    load = 0.0 if spec.rf.filter_double_buffered else const_words / spec.dram_words_per_cycle
    if preload:  # time beyond the producer's: its DRAM streams run while the producer computes
        prod = next(ctx.done[x] for x in node.data_inputs if x in ctx.on_chip)
        busy = prod.extra["glb_words"]["psum_reads"] + to_pes
        processing = max(0.0, busy / glb_spec.psum_read_words_per_cycle - prod.processing_cycles)
        words = prod.extra["dram_words"]
        together = spec.transfer_cycles(prod.processing_cycles + processing,
                                        words["ifmap"] + words["ofmap"] + words["residual"] + dram,
                                        words["filters"])  # fmt: skip
        cycles = max(0.0, float(together) - prod.cycles)
    else:
        compute = ops / (spec.pes * spec.rf.macs_per_cycle)
        processing = max(compute, to_pes / glb_spec.ifmap_read_words_per_cycle,
                         from_pes / glb_spec.psum_write_words_per_cycle) + load  # fmt: skip
        cycles = float(spec.transfer_cycles(processing, dram - const_words, const_words))
    active = min(spec.pes, out) if ops else 0
    array = to_pes + from_pes + const_words
    return _row(node, ctx, macs=0, cycles=cycles, processing=processing, active=active, dram=dram,
                glb=glb, array=array, rf=3 * ops + const_words, ops=ops)  # fmt: skip


def _fused(node: Node, ctx: Context, ops: float, dram_in: float = 0.0, vector: float = 0.0,
           const_words: float = 0.0) -> LayerResult:  # fmt: skip
    """An op applied on its producer's output path: its ALU operations, plus the load of a
    broadcast vector (``vector`` words, ``dram_in`` of them from DRAM, through the GLB into the
    PEs) or of per-channel constants (``const_words``, DRAM straight into the scratchpads)."""
    spec = ctx.spec
    load = 0.0 if spec.rf.filter_double_buffered else const_words / spec.dram_words_per_cycle
    cycles = float(spec.transfer_cycles(load, dram_in, const_words))
    row = _row(node, ctx, macs=0, cycles=cycles, processing=load, active=0, dram=dram_in + const_words,
               glb=2 * vector, array=vector + const_words, rf=3 * ops + const_words, ops=ops)  # fmt: skip
    row.extra["fused_into"] = ctx.fused_into[node.name]
    return row


def _act(node: Node, ctx: Context) -> LayerResult:
    """An activation: :data:`ACT_OPS` per output, on the producer's output path when fused;
    PReLU's slopes load like filters."""
    const = sum(ctx.plan.consts[w].size for w in node.weights)
    ops = ctx.size(node.out_shape) * ACT_OPS[node.attrs.kind]
    if node.name in ctx.fused_into:
        return _fused(node, ctx, ops, const_words=const)
    return _pass(node, ctx, ACT_OPS[node.attrs.kind], const_words=const)


def _mul(node: Node, ctx: Context) -> LayerResult:
    """``a * b``: a pass reading both operands, or (b a fused per-channel vector) one multiply
    per output on a's producer's output path, after loading b."""
    if node.name in ctx.fused_into:
        b = ctx.size(node.in_shapes[1])
        return _fused(node, ctx, ctx.size(node.out_shape), dram_in=b * ctx.ratio(node.inputs[1]), vector=b)
    return _pass(node, ctx, 1)


def _copy(node: Node, ctx: Context, words_in: float) -> LayerResult:
    """A data movement without arithmetic: ``words_in`` input elements in, the output out."""
    x = node.inputs[0]
    return _stream(node, ctx, dram_in=words_in * ctx.ratio(x), glb_in=words_in, to_pes=words_in,
                   from_pes=ctx.size(node.out_shape), ops=0)  # fmt: skip


def _slice(node: Node, ctx: Context) -> LayerResult:
    """The channels kept: read and written once (the rest of the input is not touched)."""
    return _copy(node, ctx, ctx.size(node.out_shape))


def _pad(node: Node, ctx: Context) -> LayerResult:
    """The input in, the padded output out (the border's zeros are generated on chip)."""
    return _copy(node, ctx, ctx.size(node.in_shapes[0]))


def resize_sources(size_in: int, size_out: int, attrs: ResizeAttrs) -> list[tuple[int, ...]]:
    """The source indices each output index along one axis reads (torch's definitions)."""
    out = []
    for d in range(size_out):
        if attrs.mode == "nearest":
            out.append((min(size_in - 1, d * size_in // size_out),))
            continue
        if attrs.align_corners:
            src = d * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        else:
            src = max(0.0, (d + 0.5) * size_in / size_out - 0.5)
        i = min(int(src), size_in - 1)
        out.append((i, min(i + 1, size_in - 1)))
    return out


def _resize(node: Node, ctx: Context) -> LayerResult:
    """The source rows x columns sampled come in once; each output reads its taps (1 nearest, 4
    bilinear: four multiply-adds) from the GLB."""
    a = node.attrs
    assert isinstance(a, ResizeAttrs)
    n, c, h, w = node.in_shapes[0]
    rows = {i for taps in resize_sources(h, a.size[0], a) for i in taps}
    cols = {i for taps in resize_sources(w, a.size[1], a) for i in taps}
    taps = 1 if a.mode == "nearest" else 4
    words_in, out = ctx.size((n, c, len(rows), len(cols))), ctx.size(node.out_shape)
    return _stream(node, ctx, dram_in=words_in * ctx.ratio(node.inputs[0]), glb_in=words_in,
                   to_pes=taps * out, from_pes=out, ops=out * (taps if taps > 1 else 0))  # fmt: skip


def _layernorm(node: Node, ctx: Context) -> LayerResult:
    """Statistics over each position's channels, then normalise: the GLB keeps a position's
    channels between the two reads into the PEs, so DRAM is read once (twice when one position's
    channels do not fit the GLB); scale and shift load like filters."""
    shape = node.in_shapes[0]
    size, channels = ctx.size(shape), shape[1]
    positions = size // channels
    passes_dram = 1 if channels <= ctx.spec.glb_words else 2
    ops = NORM_OPS_PER_ELEMENT * size + NORM_OPS_PER_POSITION * positions
    return _stream(node, ctx, dram_in=passes_dram * size * ctx.ratio(node.inputs[0]),
                   glb_in=passes_dram * size, to_pes=2 * size, from_pes=size, ops=ops,
                   const_words=2 * channels)  # fmt: skip


def _covered(size: int, out: int, kernel: int, stride: int, pad: int) -> int:
    """Input indices along one axis that some pooling window reads."""
    starts = (o * stride - pad for o in range(out))
    return len({i for start in starts for i in range(max(0, start), min(size, start + kernel))})


def _pool(node: Node, ctx: Context) -> LayerResult:
    """kernel ops per output; the input pixels some window covers come in (all of them unless the
    stride exceeds the kernel: a CEPD layer's 1x1 subsampling reads a quarter)."""
    if node.op is Op.GLOBAL_AVGPOOL:
        return _pass(node, ctx, math.prod(node.in_shapes[0][2:]))
    a = node.attrs
    assert isinstance(a, PoolAttrs)
    (kh, kw), (n, c, h, w), (_, _, e, f) = a.kernel, node.in_shapes[0], node.out_shape
    rows, cols = _covered(h, e, kh, a.stride[0], a.padding[0]), _covered(w, f, kw, a.stride[1], a.padding[1])
    if (rows, cols) == (h, w):
        return _pass(node, ctx, kh * kw)
    words = ctx.size((n, c, rows, cols))
    return _stream(node, ctx, dram_in=words * ctx.ratio(node.inputs[0]), glb_in=words, to_pes=words,
                   from_pes=ctx.size(node.out_shape), ops=ctx.size(node.out_shape) * kh * kw)  # fmt: skip


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
    Op.ACT: _act,
    Op.MUL: _mul,
    Op.SLICE: _slice,
    Op.PAD: _pad,
    Op.RESIZE: _resize,
    Op.LAYERNORM: _layernorm,
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
    on_chip = fused_values(plan)
    fused_into = output_fusions(plan, on_chip)
    step = {n.inputs[0]: n.output for n in plan.nodes if n.name in fused_into}
    written = {}  # a fused op's producer writes the last fused op's output instead of its own
    for value in step:
        last = value
        while last in step:
            last = step[last]
        written[value] = last
    ctx = Context(plan, spec, objective, batch, zero_fractions(plan, zeros), on_chip, siblings(plan),
                  {n.name: n for n in plan.nodes}, fused_into=fused_into, written=written)  # fmt: skip
    ctx.resident = chain_residency(ctx)
    rows = []
    for node in plan.nodes:
        handler = HANDLERS.get(node.op)
        if handler is None:
            raise CEPDError(f"eyeriss: op {node.op.value} ({node.name}) is not supported")
        rows.append(handler(node, ctx))
        ctx.done[node.output] = rows[-1]
    return SimResult(spec, batch * plan.input_shape[0], objective, rows)
