"""Cycles of the engine's program records, from its loop nests and buffers.

Cycles are counted per program record, the way the engine runs them:

* STEP (PE array): output-channel chunks of ``pe_out`` (pools: one channel) x pixel blocks of
  ``block``^2 lanes (flat: consecutive pixels of 1x1 steps; block: a lane block of the output)
  x the reduction (cin/groups x kh x kw at II=1, or the bank-conflict II), each block at least
  the epilogue drain; the chunks of a bundle's steps form one pipeline in which the weights and
  residual of the next chunk and the store of the previous one overlap the MACs (ping-pong).
* LOAD: the input tile, one burst sequence per channel row.
* BUNDLE: its records are fetched, then its loads run beside its steps: max(loads, steps, the
  ports' and the DDR's share) + the fetch + a fixed handshake overhead.
* VEC: DDR to DDR at ``vec_lanes`` elements per cycle or the bandwidth; each lane has one
  multiplier (one product per element: a multiply, an interpolation, a slope, a hard-swish). An
  activation table (2 x 2**ACT_K words) is loaded before its record streams. A resample runs per
  channel a vertical pass over the source row(s) into the line buffer for every new row pair and a
  horizontal pass per output row; a layer norm per tile of positions reads its input twice
  (statistics; then z and the epilogue, three multiplier passes per element) with a per-position
  reciprocal square root of ``LN_STAT_CYCLES`` multiplier cycles between.

Every DDR stream is striped over HP0 and HP1 (each buffer is reachable through both), so reads
and writes each get two 64-bit ports; all traffic together is bounded by the DDR controller
(``ddr.peak_mb_s`` x efficiency). The tiler (:mod:`.tiling`) costs its candidates with these
functions; :mod:`.model` sums them into the latency report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cepd_deploy.targets.pynq_z1.config import Board, EngineConfig, load_board
from cepd_deploy.targets.pynq_z1.groups import bank_ii
from cepd_deploy.targets.pynq_z1.isa import ACT_SEGS, REC_WORDS, ActFn, Buf, Kind, StepOp, VecOp

WORD_BYTES = 2  # a word of the weight blob; an arena value is ``cfg.amem_bytes`` (1 in the 8-bit engine)
PORTS = 2  # HP0 and HP1
ACT_TABLE_WORDS = 2 * ACT_SEGS  # (value, step) per segment
#: multiplier cycles of one layer-norm position's statistics: C S2 - S1**2 (two 64-bit products on
#: an 18 x 25 multiplier: 8), normalisation, the table seed and two Newton steps (3 wide products
#: each: 12), the final rounding and packing (4)
LN_STAT_CYCLES = 24
LN_PASSES = 3  # multiplier passes per element of layer norm's second pass: (C x - S1) r, z * scale


@dataclass(frozen=True)
class Bandwidth:
    """The DDR path in engine cycles: bytes per cycle of one HP port and of the DDR controller,
    first-data latency (cycles), burst limit (beats), per-burst gap (cycles), beat size (bytes)."""

    port_bpc: float  # bytes per cycle, one HP port, one direction
    ddr_bpc: float  # bytes per cycle, the DDR controller, everything together
    latency: int
    burst_beats: int
    gap: int
    beat_bytes: int

    def transfer(self, segments: int, seg_bytes: int) -> float:
        """Cycles to move ``segments`` contiguous runs of ``seg_bytes`` in one direction,
        striped over both ports."""
        if segments <= 0 or seg_bytes <= 0:
            return 0.0
        beats = math.ceil(seg_bytes / self.beat_bytes)
        bursts = math.ceil(beats / self.burst_beats)
        return segments * (beats * self.beat_bytes / self.port_bpc + bursts * self.gap) / PORTS

    @property
    def direction_bpc(self) -> float:
        return PORTS * self.port_bpc


def bandwidth(cfg: EngineConfig, board: Board) -> Bandwidth:
    """The board's HP ports and DDR in cycles of the engine's clock."""
    hp = board.hp_port
    port = hp.width_bits / 8 * hp.efficiency
    ddr = board.ddr_peak_mb_s * board.ddr_efficiency / cfg.clock_mhz
    return Bandwidth(
        port, ddr, hp.read_latency_cycles, hp.burst_max_beats, hp.burst_gap_cycles, hp.width_bits // 8
    )


@dataclass
class Cost:
    """A record's cost: cycles, MACs, DDR bytes read and written, the PE array's cycles alone, and a
    step's first prefetch and last store (cycles)."""

    cycles: float = 0.0
    macs: int = 0
    rd_bytes: int = 0
    wr_bytes: int = 0
    compute: float = 0.0  # cycles of the PE array alone (no memory stalls)
    head: float = 0.0  # a step's first prefetch and last store: overlapped only at bundle edges
    tail: float = 0.0

    @property
    def ddr_bytes(self) -> int:
        return self.rd_bytes + self.wr_bytes


def step_cost(r: dict, cfg: EngineConfig, bw: Bandwidth) -> Cost:
    """One STEP record (one tile of one Plan node on the PE array)."""
    L = cfg.lanes
    oh, ow, pitch = r["oh"], r["ow"], r["src_pitch"]
    if r["flat"]:
        blocks, ii = math.ceil(oh * pitch / L), 1
    else:
        bh, bw_ = r["bh"], r["bw"]
        blocks = math.ceil(oh / bh) * math.ceil(ow / bw_)
        ii = bank_ii(pitch, (r["sh"], r["sw"]), (bh, bw_), L)
    taps = r["kh"] * r["kw"]
    mac = r["op"] == StepOp.MAC
    po = cfg.pe_out if mac else 1
    red = r["cin_g"] * taps if mac else taps
    chunks = r["groups"] * (math.ceil(r["cout_g"] / po) if mac else 1)
    slow_epi = r["e_scale"] >= 0 or r["op"] == StepOp.AVGP
    drain = math.ceil(po * L / (cfg.scale_lanes if slow_epi else cfg.epi_lanes))
    compute = blocks * max(red * ii, drain) + cfg.pipeline_depth
    A = cfg.amem_bytes
    w_bytes = po * red * (A if r["w_mem"] else WORD_BYTES) if mac else 0
    r_bytes = po * oh * ow * A if r["e_res"] >= 0 else 0
    s_bytes = po * oh * ow * A if r["dst_buf"] == Buf.DDR else 0
    prefetch = bw.transfer(1, w_bytes) + bw.transfer(po * oh if r_bytes else 0, ow * A)
    store = bw.transfer(po * oh if s_bytes else 0, ow * A)
    rd, wr = chunks * (w_bytes + r_bytes), chunks * s_bytes
    cycles = chunks * max(compute, prefetch, store, (w_bytes + r_bytes + s_bytes) / bw.ddr_bpc)
    macs = r["groups"] * r["cout_g"] * oh * ow * red if mac else 0
    return Cost(cycles, macs, rd, wr, chunks * compute, prefetch, store)


def load_cost(r: dict, cfg: EngineConfig, bw: Bandwidth) -> Cost:
    """One LOAD record: its input tile, one burst sequence per channel row plus the first-data
    latency, or the DDR's share if slower."""
    word = WORD_BYTES if r["src_mem"] else cfg.amem_bytes  # from the blob, or the arena
    span = ((r["cols"] - 1) * r["col_step"] + 1) * word  # a subsampling load reads whole spans
    nbytes = r["channels"] * r["rows"] * span
    cycles = bw.transfer(r["channels"] * r["rows"], span) + bw.latency
    return Cost(max(cycles, nbytes / bw.ddr_bpc), 0, nbytes, 0)


def vec_cost(r: dict, cfg: EngineConfig, bw: Bandwidth) -> Cost:
    """One VEC record, DDR to DDR: ``vec_lanes`` elements per cycle or the bandwidth, whichever is
    slower, plus the first-data latency and the pipeline fill (and a table load first)."""
    if r["vop"] == VecOp.RESAMPLE:
        return resample_cost(r, cfg, bw)
    if r["vop"] == VecOp.LNORM:
        return lnorm_cost(r, cfg, bw)
    c, hw = r["channels"], r["hw"]
    n = c * hw
    bcast = r["b_addr"] >= 0 and r["b_bcast"]  # one b per channel: read once per channel
    operands = 1 + (r["b_addr"] >= 0 and not bcast) + (r["e_res"] >= 0)
    out = c * (1 if r["vop"] == VecOp.GAP else hw)
    params = c if bcast else 0  # words read besides the streams
    before = 0.0  # cycles before the streams start
    if r["vop"] == VecOp.ACT and r["fn"] == ActFn.TABLE:
        before = bw.latency + bw.transfer(1, ACT_TABLE_WORDS * WORD_BYTES)
        params += ACT_TABLE_WORDS
    elif r["vop"] == VecOp.ACT and r["fn"] == ActFn.LEAKY:
        params += c if r["p_step"] else 1
    A = cfg.amem_bytes
    rd = bw.transfer(c * operands, hw * A) + bw.transfer(1 if bcast else 0, c * A)
    wr = bw.transfer(1, out * A)
    rd_bytes, wr_bytes = n * operands * A + params * WORD_BYTES, out * A
    cycles = max(n / cfg.vec_lanes, rd, wr, (rd_bytes + wr_bytes) / bw.ddr_bpc)
    return Cost(before + cycles + bw.latency + cfg.pipeline_depth, 0, rd_bytes, wr_bytes)


def resample_cost(r: dict, cfg: EngineConfig, bw: Bandwidth) -> Cost:
    """A RESAMPLE record: the column table into the line buffer, then per channel ``rs_vpass``
    vertical passes (reading ``rs_rows`` source rows in all) and one horizontal pass per output
    row, each a pipeline with its fill; the row table streams beside. A direct one (``rs_direct``)
    is one pass per channel that reads ``rs_rows`` source rows and writes the output."""
    c, w, ho, wo = r["channels"], r["in_w"], r["out_h"], r["out_w"]
    vpass, rows = r["rs_vpass"], r["rs_rows"]
    A = cfg.amem_bytes
    rd_v, wr_h = c * rows * w * A, c * ho * wo * A
    tables = (3 * wo + 3 * c * ho) * WORD_BYTES
    head = 2 * bw.latency + bw.transfer(1, 3 * wo * WORD_BYTES)
    if r["rs_direct"]:
        ddr = max(bw.transfer(c * rows, w * A), bw.transfer(c * ho, wo * A))
        cycles = max(c * ho * wo / cfg.vec_lanes, ddr, (rd_v + wr_h) / bw.ddr_bpc) + c * cfg.pipeline_depth
        return Cost(head + cycles, 0, rd_v + tables, wr_h)
    vertical = max(c * vpass * w / cfg.vec_lanes, bw.transfer(c * rows, w * A), rd_v / bw.ddr_bpc)
    horizontal = max(c * ho * wo / cfg.vec_lanes, bw.transfer(c * ho, wo * A), wr_h / bw.ddr_bpc)
    fills = c * (vpass + ho) * cfg.pipeline_depth
    return Cost(head + vertical + horizontal + fills, 0, rd_v + tables, wr_h)


def lnorm_cost(r: dict, cfg: EngineConfig, bw: Bandwidth) -> Cost:
    """An LNORM record: per tile of ``ln_tile`` positions, a statistics pass over its C channel
    rows, the per-position reciprocal square roots, then a second pass that writes the output."""
    c, hw, tile = r["channels"], r["hw"], r["ln_tile"]
    tiles = math.ceil(hw / tile)
    n = c * hw
    nbytes = n * cfg.amem_bytes
    rows = bw.transfer(c * tiles, min(hw, tile) * cfg.amem_bytes)
    first = max(n / cfg.vec_lanes, rows, nbytes / bw.ddr_bpc)
    stats = hw * LN_STAT_CYCLES / cfg.vec_lanes
    second = max(LN_PASSES * n / cfg.vec_lanes, rows, 2 * nbytes / bw.ddr_bpc)
    fills = tiles * 2 * c * cfg.pipeline_depth if hw > 1 else 2 * cfg.pipeline_depth
    params = tiles * c * 3 * WORD_BYTES  # scale and bias of every channel, per tile
    cycles = first + stats + second + fills + tiles * 2 * bw.latency
    return Cost(cycles, 0, 2 * nbytes + params, nbytes)


def fetch_cycles(records: int, bw: Bandwidth) -> float:
    """Reading ``records`` program records from the blob before they run."""
    return bw.latency + bw.transfer(1, records * REC_WORDS * 4)


def record_costs(recs: list[dict], cfg: EngineConfig, board: Board | None = None) -> list[Cost]:
    """The cost of every record (dicts of fields): a BUNDLE's cost is its loads beside its
    steps; the records in it then carry their share, for per-layer figures."""
    bw = bandwidth(cfg, board or load_board())
    costs = [Cost() for _ in recs]
    i = 0
    while i < len(recs):
        r = recs[i]
        if r["kind"] == Kind.VEC:
            costs[i] = vec_cost(r, cfg, bw)
            costs[i].cycles += cfg.bundle_overhead_cycles + fetch_cycles(1, bw)
        elif r["kind"] == Kind.BUNDLE:
            nl, nc = r["n_load"], r["n_comp"]
            loads = [load_cost(recs[i + 1 + k], cfg, bw) for k in range(nl)]
            steps = [step_cost(recs[i + 1 + nl + k], cfg, bw) for k in range(nc)]
            t_load, t_step = sum(c.cycles for c in loads), sum(c.cycles for c in steps)
            if steps:  # the chunk pipeline runs through all steps of the bundle
                t_step += steps[0].head + steps[-1].tail
            rd = sum(c.rd_bytes for c in loads + steps)  # tile loads share the read channels
            wr = sum(c.wr_bytes for c in loads + steps)
            total = max(t_load, t_step, rd / bw.direction_bpc, wr / bw.direction_bpc, (rd + wr) / bw.ddr_bpc)
            total += cfg.bundle_overhead_cycles + fetch_cycles(1 + nl + nc, bw)
            # attribute the bundle to its steps in proportion; a load-only bundle to its loads
            parts = steps if t_step > 0 else loads
            weight = sum(c.cycles for c in parts) or 1.0
            for k, c in enumerate(loads + steps):
                in_parts = (k >= nl) == (t_step > 0)
                c.cycles = total * c.cycles / weight if in_parts else 0.0
                costs[i + 1 + k] = c
            i += nl + nc
        i += 1
    return costs


def program_cycles(records, cfg: EngineConfig, board: Board | None = None) -> float:
    """Engine cycles of a whole program (records as dicts of fields)."""
    return sum(c.cycles for c in record_costs(records, cfg, board))
