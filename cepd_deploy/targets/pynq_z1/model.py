"""Latency and resource model of the engine, from its loop nests and buffers.

Cycles are counted per program record, the way the engine runs them:

* STEP (PE array): output-channel chunks of ``pe_out`` (pools: one channel) x pixel blocks of
  ``block``^2 lanes (flat: consecutive pixels of 1x1 steps; block: a lane block of the output)
  x the reduction (cin/groups x kh x kw at II=1, or the bank-conflict II), each block at least
  the epilogue drain; the chunks of a bundle's steps form one pipeline in which the weights and
  residual of the next chunk and the store of the previous one overlap the MACs (ping-pong).
* LOAD: the input tile, one burst sequence per channel row.
* BUNDLE: its records are fetched, then its loads run beside its steps: max(loads, steps, the
  ports' and the DDR's share) + the fetch + a fixed handshake overhead.
* VEC: DDR to DDR at ``vec_lanes`` elements per cycle or the bandwidth.

Every DDR stream is striped over HP0 and HP1 (each buffer is reachable through both), so reads
and writes each get two 64-bit ports; all traffic together is bounded by the DDR controller
(``ddr.peak_mb_s`` x efficiency). Resources come from per-unit coefficients, not synthesis.

>>> report = estimate(plan)                   # doctest: +SKIP
>>> report.to_json()["totals"]["latency_ms"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cepd_deploy.errors import CEPDError
from cepd_deploy.targets.pynq_z1.config import Board, EngineConfig, load_board, make_config
from cepd_deploy.targets.pynq_z1.groups import bank_ii
from cepd_deploy.targets.pynq_z1.isa import REC_WORDS, Buf, Kind, StepOp, VecOp

WORD_BYTES = 2
PORTS = 2  # HP0 and HP1


@dataclass(frozen=True)
class Bandwidth:
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
    hp = board.hp_port
    port = hp.width_bits / 8 * hp.efficiency
    ddr = board.ddr_peak_mb_s * board.ddr_efficiency / cfg.clock_mhz
    return Bandwidth(
        port, ddr, hp.read_latency_cycles, hp.burst_max_beats, hp.burst_gap_cycles, hp.width_bits // 8
    )


@dataclass
class Cost:
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
    w_bytes = po * red * WORD_BYTES if mac else 0
    r_bytes = po * oh * ow * WORD_BYTES if r["e_res"] >= 0 else 0
    s_bytes = po * oh * ow * WORD_BYTES if r["dst_buf"] == Buf.DDR else 0
    prefetch = bw.transfer(1, w_bytes) + bw.transfer(po * oh if r_bytes else 0, ow * WORD_BYTES)
    store = bw.transfer(po * oh if s_bytes else 0, ow * WORD_BYTES)
    rd, wr = chunks * (w_bytes + r_bytes), chunks * s_bytes
    cycles = chunks * max(compute, prefetch, store, (w_bytes + r_bytes + s_bytes) / bw.ddr_bpc)
    macs = r["groups"] * r["cout_g"] * oh * ow * red if mac else 0
    return Cost(cycles, macs, rd, wr, chunks * compute, prefetch, store)


def load_cost(r: dict, cfg: EngineConfig, bw: Bandwidth) -> Cost:
    span = ((r["cols"] - 1) * r["col_step"] + 1) * WORD_BYTES  # a subsampling load reads whole spans
    nbytes = r["channels"] * r["rows"] * span
    cycles = bw.transfer(r["channels"] * r["rows"], span) + bw.latency
    return Cost(max(cycles, nbytes / bw.ddr_bpc), 0, nbytes, 0)


def vec_cost(r: dict, cfg: EngineConfig, bw: Bandwidth) -> Cost:
    n = r["channels"] * r["hw"]
    operands = 1 + (r["b_addr"] >= 0) + (r["e_res"] >= 0)
    out = r["channels"] * (1 if r["vop"] == VecOp.GAP else r["hw"])
    rd = bw.transfer(r["channels"] * operands, r["hw"] * WORD_BYTES)
    wr = bw.transfer(1, out * WORD_BYTES)
    rd_bytes, wr_bytes = n * operands * WORD_BYTES, out * WORD_BYTES
    cycles = max(n / cfg.vec_lanes, rd, wr, (rd_bytes + wr_bytes) / bw.ddr_bpc)
    return Cost(cycles + bw.latency + cfg.pipeline_depth, 0, rd_bytes, wr_bytes)


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
    return sum(c.cycles for c in record_costs(records, cfg, board))


# -- resources ---------------------------------------------------------------------------------
#: Per-unit costs (Vitis HLS 7-series typical; estimates, not synthesis results).
COEFF = {
    "dsp_per_scale_lane": 2,  # 48 x 16-bit product on 25 x 18 DSP48E1s
    "dsp_address": 6,  # base-address multiplies of the load/store/vector units
    "lut_mux_per_bit_per_input": 13 / 49,  # ~13 LUT6 per bit for a 49:1 multiplexer
    "lut_lane_address": 60,  # per lane: bounds checks and bank index
    "lut_mac_lane": 8,  # per MAC: operand routing into the DSP
    "lut_epi_lane": 450,  # per epilogue lane: 64-bit shifter, saturate, adders
    "lut_scale_lane": 150,
    "lut_maxi": 1800,  # per m_axi adapter (Vitis HLS, 64-bit, bursts)
    "lut_control": 5500,  # record fetch/decode, address generators, vector unit, AXI-Lite
    "lut_pool_lane": 20,
    "ff_acc_shadow_bits": 48,  # per MAC: accumulator hand-off to the epilogue
    "ff_epi_lane": 256,
    "ff_maxi": 2500,
    "ff_control": 7000,
    "ff_lane": 64,
    "bram18_maxi": 3,  # burst buffers per m_axi adapter
    "bram18_records": 2,
}


def _bram18(banks: int, words: int) -> int:
    """BRAM18s for ``words`` 16-bit words cyclically split over ``banks`` (1024 x 18 each)."""
    return banks * math.ceil(words / banks / 1024)


def resources(cfg: EngineConfig) -> dict:
    """DSP / BRAM36 / LUT / FF estimate of one engine build, with a breakdown."""
    L, PO, c = cfg.lanes, cfg.pe_out, COEFF
    dsp = {
        "mac_array": PO * L,
        "epilogue_scale": c["dsp_per_scale_lane"] * cfg.scale_lanes,
        "address": c["dsp_address"],
    }
    bram18 = {
        "ibuf": 2 * _bram18(L, cfg.ibuf_words),
        "scratch": _bram18(L, cfg.scratch_words),
        "wbuf": 2 * _bram18(PO, cfg.wbuf_words),
        "obuf": 2 * _bram18(PO, cfg.obuf_words),
        "rbuf": 2 * _bram18(PO, cfg.rbuf_words),
        "records": c["bram18_records"],
        "m_axi": 2 * c["bram18_maxi"],
    }
    lut = {
        "gather": round(L * L * cfg.bits * c["lut_mux_per_bit_per_input"]),
        "lanes": L * (c["lut_lane_address"] + c["lut_pool_lane"]),
        "mac_array": PO * L * c["lut_mac_lane"],
        "epilogue": cfg.epi_lanes * c["lut_epi_lane"] + cfg.scale_lanes * c["lut_scale_lane"],
        "m_axi": 2 * c["lut_maxi"],
        "control": c["lut_control"],
    }
    ff = {
        "acc_shadow": PO * L * c["ff_acc_shadow_bits"],
        "lanes": L * c["ff_lane"],
        "epilogue": (cfg.epi_lanes + cfg.scale_lanes) * c["ff_epi_lane"],
        "m_axi": 2 * c["ff_maxi"],
        "control": c["ff_control"],
    }
    return {
        "dsp": sum(dsp.values()),
        "bram36": sum(bram18.values()) / 2,
        "lut": sum(lut.values()),
        "ff": sum(ff.values()),
        "breakdown": {"dsp": dsp, "bram18": bram18, "lut": lut, "ff": ff},
    }


def check_fit(res: dict, board: Board) -> None:
    """Refuse a configuration that does not fit the chip."""
    lim = board.resources
    over = [
        f"{k} {res[k]:g} > {getattr(lim, k):g}"
        for k in ("dsp", "bram36", "lut", "ff")
        if res[k] > getattr(lim, k)
    ]
    if over:
        raise CEPDError(f"engine configuration does not fit the {board.part}: {', '.join(over)}")


# -- the report --------------------------------------------------------------------------------
@dataclass
class Report:
    """What ``estimate`` returns; ``to_json()`` is what ``--report --json`` prints."""

    config: EngineConfig
    board: Board
    resources: dict
    total_cycles: float
    macs: int
    ddr_bytes: int
    ops: list[dict] = field(default_factory=list)  # per Plan node
    layers: list[dict] = field(default_factory=list)  # per source layer

    @property
    def latency_ms(self) -> float:
        return self.total_cycles / (self.config.clock_mhz * 1e3)

    def to_json(self) -> dict:
        peak = self.config.macs_per_cycle
        return {
            "target": "pynq-z1",
            "board": {"part": self.board.part, "board_part": self.board.board_part},
            "engine": self.config.to_dict() | {"lanes": self.config.lanes, "macs_per_cycle": peak},
            "resources": self.resources,
            "totals": {
                "cycles": round(self.total_cycles),
                "latency_ms": self.latency_ms,
                "macs": self.macs,
                "gmac_s": self.macs / (self.latency_ms * 1e6) if self.latency_ms else 0.0,
                "dsp_efficiency": self.macs / (self.total_cycles * peak) if self.total_cycles else 0.0,
                "ddr_mbytes": self.ddr_bytes / 1e6,
                "peak_ms": self.macs / peak / (self.config.clock_mhz * 1e3),
            },
            "layers": self.layers,
            "ops": self.ops,
        }


def summarise(program, plan, cfg: EngineConfig, board: Board, res: dict) -> Report:
    """Per-node and per-layer figures from the record costs of a compiled program."""
    costs = record_costs(program.records, cfg, board)
    by_node: dict[str, dict] = {}
    for meta, cost in zip(program.meta, costs):
        d = by_node.setdefault(meta["node"], {"cycles": 0.0, "macs": 0, "ddr_bytes": 0, "compute": 0.0})
        d["cycles"] += cost.cycles
        d["macs"] += cost.macs
        d["ddr_bytes"] += cost.ddr_bytes
        d["compute"] += cost.compute
    ms = 1.0 / (cfg.clock_mhz * 1e3)
    peak = cfg.macs_per_cycle
    ops, layers = [], {}
    nodes = {n.name: n for n in plan.nodes}
    for name, d in by_node.items():
        node = nodes[name]
        row = {
            "name": name,
            "op": node.op.value,
            "layer": node.layer,
            "kernel": list(node.attrs.get("kernel", ())),
            "cycles": round(d["cycles"]),
            "ms": d["cycles"] * ms,
            "macs": d["macs"],
            "ddr_bytes": d["ddr_bytes"],
            "dsp_efficiency": d["macs"] / (d["cycles"] * peak) if d["cycles"] else 0.0,
        }
        ops.append(row)
        lay = layers.setdefault(node.layer, {"name": node.layer, "cycles": 0.0, "macs": 0, "ddr_bytes": 0})
        lay["cycles"] += d["cycles"]
        lay["macs"] += d["macs"]
        lay["ddr_bytes"] += d["ddr_bytes"]
    for lay in layers.values():
        lay["ms"] = lay["cycles"] * ms
        lay["dsp_efficiency"] = lay["macs"] / (lay["cycles"] * peak) if lay["cycles"] else 0.0
        lay["cycles"] = round(lay["cycles"])
    total = sum(c.cycles for c in costs)
    return Report(
        cfg,
        board,
        res,
        total,
        sum(c.macs for c in costs),
        sum(c.ddr_bytes for c in costs),
        ops,
        list(layers.values()),
    )


def estimate(plan, config: EngineConfig | dict | None = None) -> Report:
    """Latency and resources of ``plan`` on the PYNQ-Z1 engine (refuses configurations or
    layers that do not fit). ``plan`` is a Plan lowered with batch 1."""
    from cepd_deploy.targets.pynq_z1.program import compile_program

    cfg = make_config(config)
    board = load_board()
    res = resources(cfg)
    check_fit(res, board)
    program = compile_program(plan, cfg)
    return summarise(program, plan, cfg, board, res)
