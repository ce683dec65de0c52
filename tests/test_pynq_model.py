"""PYNQ-Z1 target: board spec, engine configuration, resources and the latency model."""

from __future__ import annotations

import math

import pytest

from cepd_deploy import build_model, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.cost import plan_macs
from cepd_deploy.targets.pynq_z1 import estimate, isa, load_board, make_config, model, resources
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.groups import bank_ii, choose_pitch


def test_board_spec_loads_and_is_the_xc7z020():
    b = load_board()
    assert (b.part, b.board_part) == ("xc7z020clg400-1", "www.digilentinc.com:pynq-z1:part0:1.0")
    assert (b.resources.dsp, b.resources.bram36, b.resources.lut, b.resources.ff) == (220, 140, 53200, 106400)
    assert b.hp_port.width_bits == 64 and b.ddr_peak_mb_s == 2100


def test_default_engine_fits_with_exact_counts():
    r = resources(EngineConfig())
    # DSP: 4 x 49 MACs + 7 scale lanes x 2 (48x16-bit products) + 6 address multipliers = 216
    assert r["dsp"] == 216
    # BRAM18: ibuf 2 halves x 49 banks x 1 + scratch 49 + wbuf 2 x 4 banks x 9 + obuf 2 x 4 x 2
    #         + rbuf 2 x 4 x 2 + records 2 + m_axi 2 x 3 = 259, + the vector unit's activation table
    #         (2 copies x 1024 x 32 bits: 4) and buffer (4 banks x 512 x 48 bits: 8) = 271 -> 135.5 BRAM36
    assert r["bram36"] == 135.5
    assert r["lut"] < 53200 and r["ff"] < 106400
    model.check_fit(r, load_board())


def test_configurations_that_do_not_fit_are_refused():
    with pytest.raises(CEPDError, match="does not fit.*dsp"):
        model.check_fit(resources(make_config(pe_out=8)), load_board())
    with pytest.raises(CEPDError, match="does not fit"):
        estimate(lower(build_model("resnet20"), (1, 3, 32, 32)), {"ibuf_words": 4 * 50176})
    with pytest.raises(CEPDError, match="bits"):
        make_config(bits=24)
    with pytest.raises(CEPDError, match="MHz"):
        make_config(clock_mhz=400)
    with pytest.raises(CEPDError, match="unknown engine config"):
        make_config({"pe_outs": 4})


def test_step_cost_follows_the_loop_nest():
    """A 3x3 conv 16->8 on a 14x14 output tile, 7x7 lane blocks, pitch 21, output to DDR."""
    cfg = EngineConfig()
    bw = model.bandwidth(cfg, load_board())
    assert (bw.port_bpc, bw.ddr_bpc) == (6.8, 15.75)  # 64 bit x 0.85; 2100 MB/s x 0.75 / 100 MHz
    r = isa.record(
        isa.Kind.STEP,
        op=0,
        flat=0,
        bh=7,
        bw=7,
        src_pitch=21,
        oh=14,
        ow=14,
        sh=1,
        sw=1,
        kh=3,
        kw=3,
        cin_g=16,
        cout_g=8,
        groups=1,
        dst_buf=int(isa.Buf.DDR),
    )
    c = model.step_cost(r, cfg, bw)
    # 4 blocks x max(red 16*9 = 144 at II 1, drain 4*49/14 = 14) + depth 12 = 588 per chunk;
    # chunks = 8 / 4 = 2; weights (1152 B) and stores (1568 B) hide behind the MACs
    assert c.compute == c.cycles == 2 * (4 * 144 + 12)
    assert c.macs == 8 * 14 * 14 * 144
    # first prefetch: 144 beats x 8 B / 6.8 B/cycle + 9 bursts, over 2 ports
    assert c.head == pytest.approx((144 * 8 / 6.8 + 9) / 2)
    # last store: 4 channels x 14 rows of 28 B (4 beats, 1 burst each), over 2 ports
    assert c.tail == pytest.approx(56 * (4 * 8 / 6.8 + 1) / 2)
    assert (c.rd_bytes, c.wr_bytes) == (2 * 1152, 2 * 1568)


def test_bank_conflicts_and_pitch_choice():
    assert bank_ii(21, (1, 1), (7, 7), 49) == 1  # pitch 7*3: 49 distinct banks
    assert bank_ii(49, (1, 1), (7, 7), 49) == 7  # every row on the same banks
    assert bank_ii(14, (2, 2), (7, 7), 49) == 1  # stride 2 is coprime to 7
    p = choose_pitch(32, [((7, 7), (1, 1))], 49)
    assert p >= 32 and bank_ii(p, (1, 1), (7, 7), 49) == 1
    assert choose_pitch(32, [], 49) == 32  # flat-only values keep their width


def test_estimate_report_is_consistent():
    plan = lower(build_model("resnet20"), (1, 3, 32, 32))
    rep = estimate(plan)
    j = rep.to_json()
    t = j["totals"]
    assert t["latency_ms"] == pytest.approx(t["cycles"] / 1e5, abs=1e-5)  # 100 MHz
    # every MAC of the Plan is computed (halo rows of a chained 3x3 step are computed again)
    assert t["macs"] >= plan_macs(plan)
    assert estimate(plan, chain_groups=False).macs == plan_macs(plan)  # through DDR: exactly once
    assert 0 < t["dsp_efficiency"] <= 1 and t["peak_ms"] < t["latency_ms"]
    assert sum(op["cycles"] for op in j["ops"]) == pytest.approx(t["cycles"], rel=1e-3)
    assert {op["name"] for op in j["ops"]} == {n.name for n in plan.nodes}
    assert {la["name"] for la in j["layers"]} == {n.layer for n in plan.nodes}
    assert j["resources"]["dsp"] == 216 and set(j["resources"]) >= {"dsp", "bram36", "lut", "ff"}
    # a faster clock: fewer milliseconds but more cycles (DDR costs more cycles)
    fast = estimate(plan, {"clock_mhz": 200}).to_json()["totals"]
    assert fast["latency_ms"] < t["latency_ms"] and fast["cycles"] >= t["cycles"]


def test_estimate_refuses_batched_plans():
    with pytest.raises(CEPDError, match="one image"):
        estimate(lower(build_model("resnet20"), (2, 3, 32, 32)))


def test_peak_bound_of_resnet50():
    """The 186 ms bound of the issue: 4.09 GMAC at 220 MACs/cycle and 100 MHz; our array has 196."""
    macs = 4_089_184_256
    assert macs / 220 / 1e5 == pytest.approx(185.9, abs=0.1)
    assert math.isclose(macs / EngineConfig().macs_per_cycle / 1e5, 208.6, abs_tol=0.1)
