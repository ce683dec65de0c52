"""Latency and resource model of the engine: the cycles of a compiled program's records
(:mod:`.cycles`) per Plan node, per source layer and in total, and the resources of one engine
build from per-unit coefficients, not synthesis.

>>> report = estimate(plan)                   # doctest: +SKIP
>>> report.to_json()["totals"]["latency_ms"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import ConvAttrs, Op, Plan, PoolAttrs
from cepd_deploy.targets.pynq_z1.config import Board, EngineConfig, load_board, make_config
from cepd_deploy.targets.pynq_z1.cycles import (  # noqa: F401  (bandwidth, step_cost: public here too)
    Bandwidth,
    Cost,
    bandwidth,
    load_cost,
    program_cycles,
    record_costs,
    step_cost,
    vec_cost,
)
from cepd_deploy.targets.pynq_z1.isa import ACT_SEGS
from cepd_deploy.targets.pynq_z1.program import Program, compile_program

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
    # the packed MAC (bits <= 8): per DSP, the high field's borrow correction P[34:17] + P[16] (18-bit
    # adder) and a capture of P[34:0] every 4 products; per MAC, a 30-bit fabric accumulator (9216
    # products of at most 127 x 128 < 2**28) and its hand-off to the epilogue
    "lut_unpack_per_dsp": 18,
    "ff_unpack_per_dsp": 35,
    "lut_acc_per_mac": 30,
    "packed_acc_bits": 30,
    "ff_epi_lane": 256,
    "ff_maxi": 2500,
    "ff_control": 7000,
    "ff_lane": 64,
    "bram18_maxi": 3,  # burst buffers per m_axi adapter
    "bram18_records": 2,
    # the vector unit: one 18 x 25 multiplier per lane in LUTs (the DSPs are the PE array's), a
    # 64-bit shift-round-saturate per lane; the shared special units: activation-table
    # interpolation, the divide-by-6 of hard-sigmoid (a constant divider), layer norm's statistics
    # and reciprocal square root, the resample address generators
    "lut_vec_mul": 330,
    "lut_vec_lane": 400,
    "lut_vec_special": 2600,
    "ff_vec_lane": 250,
    "ff_vec_special": 2200,
    "act_table_copies": 2,  # (value, step) pairs, 32 bits; two dual-port copies serve four lanes
    "vbuf_bits": 48,
}


def _bram18_wide(banks: int, words: int, bits: int) -> int:
    """BRAM18s for ``words`` of ``bits`` split over ``banks`` (a bank: 512 x 36 or 1024 x 18 blocks)."""
    depth = math.ceil(words / banks)
    per = math.ceil(bits / 36) if depth <= 512 else math.ceil(depth / 1024) * math.ceil(bits / 18)
    return banks * per


def _bram18(banks: int, words: int, bits: int = 16) -> int:
    """BRAM18s for ``words`` of ``bits`` cyclically split over ``banks`` (2048 x 9, 1024 x 18 or
    512 x 36 each)."""
    depth = 2048 if bits <= 9 else 1024 if bits <= 18 else 512
    return banks * math.ceil(words / banks / depth)


def resources(cfg: EngineConfig) -> dict:
    """DSP / BRAM36 / LUT / FF estimate of one engine build, with a breakdown. The packed engine's
    weight, output and residual buffers hold channel pairs (one bank per DSP column, 2 x bits wide)."""
    L, PO, c, B, K = cfg.lanes, cfg.pe_out, COEFF, cfg.bits, cfg.pack
    dsp = {
        "mac_array": cfg.dsp_macs,
        "epilogue_scale": c["dsp_per_scale_lane"] * cfg.scale_lanes,
        "address": c["dsp_address"],
    }
    bram18 = {
        "ibuf": 2 * _bram18(L, cfg.ibuf_words, B),
        "scratch": _bram18(L, cfg.scratch_words, B),
        "wbuf": 2 * _bram18(PO // K, cfg.wbuf_words // K, K * B),
        "obuf": 2 * _bram18(PO // K, cfg.obuf_words // K, K * B),
        "rbuf": 2 * _bram18(PO // K, cfg.rbuf_words // K, K * B),
        "records": c["bram18_records"],
        "m_axi": 2 * c["bram18_maxi"],
        "act_table": _bram18_wide(c["act_table_copies"], c["act_table_copies"] * ACT_SEGS, 32),
        "vbuf": _bram18_wide(cfg.vec_lanes, cfg.vbuf_words, c["vbuf_bits"]),
    }
    lut = {
        "gather": round(L * L * cfg.bits * c["lut_mux_per_bit_per_input"]),
        "lanes": L * (c["lut_lane_address"] + c["lut_pool_lane"]),
        "mac_array": PO * L * c["lut_mac_lane"],
        "unpack": (cfg.dsp_macs * c["lut_unpack_per_dsp"] + PO * L * c["lut_acc_per_mac"]) if K > 1 else 0,
        "epilogue": cfg.epi_lanes * c["lut_epi_lane"] + cfg.scale_lanes * c["lut_scale_lane"],
        "m_axi": 2 * c["lut_maxi"],
        "control": c["lut_control"],
        "vector": cfg.vec_lanes * (c["lut_vec_mul"] + c["lut_vec_lane"]) + c["lut_vec_special"],
    }
    ff = {
        "acc_shadow": PO * L * (c["ff_acc_shadow_bits"] if K == 1 else 2 * c["packed_acc_bits"]),
        "unpack": cfg.dsp_macs * c["ff_unpack_per_dsp"] if K > 1 else 0,
        "lanes": L * c["ff_lane"],
        "epilogue": (cfg.epi_lanes + cfg.scale_lanes) * c["ff_epi_lane"],
        "m_axi": 2 * c["ff_maxi"],
        "control": c["ff_control"],
        "vector": cfg.vec_lanes * c["ff_vec_lane"] + c["ff_vec_special"],
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
            "engine": self.config.to_dict()
            | {"lanes": self.config.lanes, "macs_per_cycle": peak, "pack": self.config.pack},
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


def summarise(program: Program, plan: Plan, cfg: EngineConfig, board: Board, res: dict) -> Report:
    """Per-node and per-layer figures from the record costs of a compiled program."""
    costs = record_costs(program.records, cfg, board)
    by_node: dict[str, dict] = {}
    for meta, cost in zip(program.meta, costs):
        d = by_node.setdefault(meta["node"], {"cycles": 0.0, "macs": 0, "ddr_bytes": 0, "compute": 0.0})
        d["cycles"] += cost.cycles
        d["macs"] += cost.macs
        d["ddr_bytes"] += cost.ddr_bytes
        d["compute"] += cost.compute
    for n in plan.nodes:  # views take no record and no time
        if n.op is Op.SLICE:
            by_node.setdefault(n.name, {"cycles": 0.0, "macs": 0, "ddr_bytes": 0, "compute": 0.0})
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
            "kernel": list(node.attrs.kernel) if isinstance(node.attrs, (ConvAttrs, PoolAttrs)) else [],
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


def one_image(plan: Plan) -> Plan:
    """The Plan of one image of ``plan``'s batch (the engine runs one image per call): every
    activation shape with N = 1; the ops and weights are the same."""
    if plan.input_shape[0] == 1:
        return plan
    one = lambda shape: (1, *shape[1:])  # noqa: E731
    nodes = [replace(n, in_shapes=tuple(map(one, n.in_shapes)), out_shape=one(n.out_shape)) for n in plan]
    layers = {
        k: replace(v, in_shape=one(v.in_shape), out_shape=one(v.out_shape)) for k, v in plan.layers.items()
    }
    return replace(plan, input_shape=one(plan.input_shape), nodes=nodes, layers=layers)


def estimate(plan: Plan, config: EngineConfig | dict | None = None, chain_groups: bool = True) -> Report:
    """Latency and resources of ``plan`` on the PYNQ-Z1 engine (refuses configurations or
    layers that do not fit). ``plan`` is a Plan lowered with batch 1; ``chain_groups`` False: every
    layer through DDR (no on-chip chaining of consecutive groups)."""
    cfg = make_config(config)
    board = load_board()
    res = resources(cfg)
    check_fit(res, board)
    program = compile_program(plan, cfg, chain_groups=chain_groups)
    return summarise(program, plan, cfg, board, res)
