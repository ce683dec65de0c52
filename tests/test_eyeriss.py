"""Eyeriss target: op coverage, the row-stationary mapper's constraints and arithmetic, the
simulator's accounting (fusions, zeros, batch, objectives) and its JSON output."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import cepd_deploy
from cepd_deploy import lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.cost import node_macs, plan_macs
from cepd_deploy.plan.ir import (
    WEIGHTED,
    ActAttrs,
    ConvAttrs,
    Epilogue,
    NoAttrs,
    NormAttrs,
    Op,
    PadAttrs,
    Plan,
    PoolAttrs,
    ResizeAttrs,
    SliceAttrs,
)
from cepd_deploy.plan.verify import verify
from cepd_deploy.targets import eyeriss
from cepd_deploy.targets.base import Kind
from cepd_deploy.targets.eyeriss import mapper, simulator
from cepd_deploy.targets.eyeriss.mapper import PARAMS, TIE, Mapping, cost_of, evaluate, search
from cepd_deploy.targets.eyeriss.problem import ConvProblem, ceil_div, conv_problem
from cepd_deploy.targets.eyeriss.report import plot, table
from cepd_deploy.targets.eyeriss.schedule import output_fusions, zero_fractions
from cepd_deploy.targets.eyeriss.simulator import ACT_OPS, HANDLERS, resize_sources, rlc_ratio
from cepd_deploy.targets.eyeriss.spec import Constraint, load_spec
from tests.plans import _Builder, modern_plan

V1 = load_spec("eyeriss_v1")
SCALED = load_spec("eyeriss_scaled")


class OpZoo(nn.Module):
    """Every kind of op a dense network lowers to: strided, dilated, grouped and depthwise convs,
    an unfoldable BN (AFFINE), both poolings, a channel concat, a residual add and a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 24, 3, padding=2, dilation=2, groups=4)
        self.pw = nn.Conv2d(24, 16, 1)
        self.bn = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.dw(x)) + x
        z = self.pw(torch.relu(self.grouped(y)))
        c = self.bn(self.pool(torch.cat([y, z], 1)))
        return self.fc(torch.flatten(self.gap(self.avg(c)), 1))


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 32, 1, bias=False)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.c3(y) + self.c2(y))


@pytest.fixture(scope="module")
def dense_plan():
    torch.manual_seed(0)
    return lower(OpZoo().eval(), (1, 3, 32, 32))


@pytest.fixture(scope="module")
def unfused_plan():
    torch.manual_seed(0)
    return lower(OpZoo().eval(), (1, 3, 32, 32), fuse=False)


@pytest.fixture(scope="module")
def cepd_plans():
    """A CEPD model in the default o-k-i layout and in the paper's eq9 layout (with PERMUTEs)."""
    torch.manual_seed(0)
    plans = {}
    for layout in ("o-k-i", "eq9"):
        model = cepd_deploy.convert(TwoConvs().eval(), flops_remaining=0.5, layout=layout,
                                    input_shape=(1, 16, 16, 16), convert_first=True)  # fmt: skip
        plans[layout] = lower(model, (1, 16, 16, 16))
    return plans


# -- the target ---------------------------------------------------------------------------------
def test_target_covers_every_op():
    target = eyeriss.Eyeriss()
    assert (target.name, target.kind) == ("eyeriss", Kind.SIMULATOR)
    assert target.ops == frozenset(Op) == frozenset(HANDLERS)  # a handler for every op it claims


def test_plans_cover_the_ops_they_should(dense_plan, unfused_plan, cepd_plans):
    seen = {n.op for p in (dense_plan, unfused_plan, *cepd_plans.values(), modern_plan()) for n in p}
    assert seen == set(Op)  # so the simulate tests below exercise every handler


# -- problems -----------------------------------------------------------------------------------
def test_every_weighted_op_is_one_conv_problem(dense_plan, cepd_plans):
    for plan in (dense_plan, *cepd_plans.values()):
        for node in plan:
            if node.op in WEIGHTED:
                assert conv_problem(node).macs == node_macs(node), node.name
    dw = conv_problem(next(n for n in dense_plan if n.name == "dw"))
    assert (dw.g, dw.c, dw.m, dw.h, dw.e) == (16, 1, 1, 18, 16)  # depthwise: 16 groups of 1 -> 1
    grouped = conv_problem(next(n for n in dense_plan if n.name == "grouped"))
    assert (grouped.g, grouped.c, grouped.m, grouped.dh, grouped.h) == (4, 4, 6, 2, 20)
    stem = conv_problem(next(n for n in dense_plan if n.name == "stem"))
    assert (stem.uh, stem.e, stem.pad_words) == (2, 16, 34 * 34 - 32 * 32)


# -- the mapper ---------------------------------------------------------------------------------
# AlexNet CONV3 at batch 4 (JSSC 2017 Table III): 13x13 output, 3x3 filters, 256 -> 384 channels.
CONV3 = ConvProblem(4, 1, 256, 384, 15, 15, 3, 3, 13, 13, pad_words=15 * 15 - 13 * 13)


def test_published_mapping_costs_what_the_arithmetic_says():
    # the chip's own CONV3 mapping: sets of 3x13 PEs, t=4 filter sets, p=16 filters x q=4
    # channels per PE, psums of m=64 filters for all n=4 images in the GLB
    chip = Mapping(set_rows=3, strip_cols=13, parallel_strips=1, filter_sets=4, channel_sets=1,
                   group_sets=1, image_sets=1, p=16, q=4, m_tile=64, n_tile=4, e_tile=13)  # fmt: skip
    c = cost_of(CONV3, V1, chip)
    assert c["fits"] == 1  # 4 images x (64*13*13 psums + 4*15*15 ifmap) = 46,864 <= 51,200 words
    assert c["active_pes"] == 3 * 13 * 4 == 156
    # passes = 4 images x (384/64) filter rounds x (256/4) channel chunks = 1,536, each a 13-wide
    # row of 16 filters x 4 channels x 3 taps: 1,536 x 13*16*4*3 = 3,833,856 cycles = MACs / 156
    assert c["compute_cycles"] == 1536 * 13 * 16 * 4 * 3 == CONV3.macs / 156
    # each output is written once per channel chunk: 4*384*169 = 259,584 outputs x 64
    assert c["glb_psum_writes"] == 259_584 * 64
    assert c["glb_psum_reads"] == 259_584 * 63
    # the 15-row ifmap of 256 channels x 4 images is read once per filter round (6)
    assert c["glb_ifmap_reads"] == 6 * 4 * 256 * 15 * 15
    # psum writes through a 4-word port bound the array: 16,613,376 / 4 = 4,153,344 cycles,
    # then the 884,736 filter words stream from DRAM at 720 MB/s = 1.8 words/cycle
    assert c["port_cycles"] == 16_613_376 / 4
    assert c["filter_load_cycles"] == pytest.approx(884_736 / 1.8)
    assert c["processing_cycles"] == pytest.approx(4_153_344 + 491_520)
    # DRAM: filters once, the unpadded ifmap once per m tile (6 x 4*256*13*13), the ofmap once
    assert c["dram"] == pytest.approx(884_736 + 6 * 4 * 256 * 169 + 259_584)


def _check_mapping(problem: ConvProblem, spec, mapping: Mapping, cost: dict) -> None:
    s = min(problem.s, spec.rf.ifmap_size_words)
    assert mapping.p * mapping.q * s <= spec.rf.filter_size_words
    assert mapping.q * s <= spec.rf.ifmap_size_words and mapping.p <= spec.rf.psum_size_words
    assert mapping.set_rows * mapping.channel_sets <= spec.array.rows
    assert 1 <= cost["active_pes"] <= spec.pes
    assert cost["fits"] == 1
    # no mapping beats the array's peak, and latency includes processing
    assert cost["compute_cycles"] * spec.pes * spec.rf.macs_per_cycle >= problem.macs * (1 - 1e-9)
    assert cost["cycles"] >= cost["processing_cycles"] >= cost["compute_cycles"]
    assert cost["dram"] >= problem.weights  # every filter comes from DRAM at least once


PROBLEMS = {
    "3x3": ConvProblem(1, 1, 64, 64, 58, 58, 3, 3, 56, 56, pad_words=58 * 58 - 56 * 56),
    "1x1 strided": ConvProblem(2, 1, 256, 512, 56, 56, 1, 1, 28, 28, 2, 2),
    "7x7 stem": ConvProblem(1, 1, 3, 64, 230, 230, 7, 7, 112, 112, 2, 2, pad_words=230 * 230 - 224 * 224),
    "11x11 stride 4": ConvProblem(4, 1, 3, 96, 227, 227, 11, 11, 55, 55, 4, 4),
    "depthwise": ConvProblem(1, 96, 1, 1, 30, 30, 3, 3, 28, 28, pad_words=30 * 30 - 28 * 28),
    "grouped": ConvProblem(4, 2, 48, 128, 31, 31, 5, 5, 27, 27),
    "fc": ConvProblem(4, 1, 9216, 4096, 1, 1, 1, 1, 1, 1),
    "odd ranks": ConvProblem(1, 1, 17, 13, 16, 16, 1, 1, 16, 16),
    "wide": ConvProblem(3, 1, 64, 64, 226, 226, 3, 3, 224, 224),
    "dilated": ConvProblem(1, 4, 4, 6, 20, 20, 3, 3, 16, 16, 1, 1, 2, 2),
}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("spec", [V1, SCALED], ids=["v1", "scaled"])
def test_mappings_respect_the_hardware(name, spec):
    problem = PROBLEMS[name]
    for objective in ("latency", "energy"):
        mapping, cost = search(problem, spec, objective)
        _check_mapping(problem, spec, mapping, cost)


def test_objectives_trade_latency_for_energy():
    for problem in PROBLEMS.values():
        _, fast = search(problem, V1, "latency")
        _, frugal = search(problem, V1, "energy")
        # near-ties (within TIE of the best) go to the other measure
        assert fast["cycles"] <= frugal["cycles"] * (1 + TIE)
        assert frugal["energy"] <= fast["energy"] * (1 + TIE)
    with pytest.raises(CEPDError, match="objective"):
        search(CONV3, V1, "area")


def test_search_is_no_worse_than_the_published_mapping():
    chip = Mapping(3, 13, 1, 4, 1, 1, 1, 16, 4, 64, 4, 13)
    for objective, key in (("latency", "cycles"), ("energy", "energy")):
        _, best = search(CONV3, V1, objective)
        assert best[key] <= cost_of(CONV3, V1, chip)[key] * (1 + 1e-9)


def _exhaustive(p: ConvProblem, spec) -> dict[str, float]:
    """The best cycles and energy over every mapping of a small problem (no pruning at all)."""
    rows, cols, rf = spec.array.rows, spec.array.cols, spec.rf
    sr, sc = min(p.r, rows), min(p.s, rf.ifmap_size_words)
    pes = list(itertools.product(range(1, rf.psum_size_words + 1), range(1, rf.ifmap_size_words // sc + 1)))
    found = []
    for e in range(1, min(p.e, cols) + 1):
        for r in range(1, min(rows // sr, p.c) + 1):
            slots = (rows // sr // r) * (cols // e)
            dims = (ceil_div(p.e, e), p.m, p.g, p.n)
            for se, t, g, b in itertools.product(*(range(1, min(x, slots) + 1) for x in dims)):
                for pp, qq in pes:
                    if se * t * g * b > slots or pp * qq * sc > rf.filter_size_words:
                        continue
                    if t > ceil_div(p.m, pp) or r > ceil_div(p.c, qq):
                        continue
                    tiles = itertools.product(
                        range(pp * t, p.m + pp * t, pp * t),
                        range(e * se, p.e + e * se, e * se),
                        range(b, p.n + b, b),
                    )
                    found += [
                        (sr, e, se, t, r, g, b, pp, qq, min(mt, p.m), min(nt, p.n), min(et, p.e))
                        for mt, et, nt in tiles
                    ]
    table = np.array(found, dtype=np.int64)
    cost = evaluate(p, spec, {k: table[:, i] for i, k in enumerate(PARAMS)})
    return {k: float(np.where(cost["fits"], cost[k], np.inf).min()) for k in ("cycles", "energy")}


SMALL = [
    ConvProblem(4, 1, 3, 8, 19, 19, 5, 5, 4, 4, 4, 4),
    ConvProblem(2, 2, 6, 10, 9, 9, 3, 3, 7, 7, pad_words=32),
]


@pytest.mark.parametrize("problem", SMALL)
def test_search_is_near_the_exhaustive_optimum(problem):
    best = _exhaustive(problem, V1)  # 33k and 217k mappings
    _, fast = search(problem, V1, "latency")
    _, frugal = search(problem, V1, "energy")
    assert fast["cycles"] <= best["cycles"] * (1 + TIE)
    assert frugal["energy"] <= best["energy"] * 1.05  # the pruned search loses at most 5% here


def test_too_wide_rows_are_tiled_across_the_width():
    # 1 x 4000 output row: one filter's psums alone need 4000 words per image; the tiny GLB
    # below forces column tiles
    spec = load_spec("eyeriss_v1")
    small = dataclasses.replace(spec, glb=dataclasses.replace(spec.glb, usable_kib=4.0))
    problem = ConvProblem(1, 1, 8, 8, 3, 4002, 3, 3, 1, 4000)
    mapping, cost = search(problem, small, "latency")
    assert mapping.width_tiles > 1
    _check_mapping(problem, small, mapping, cost)
    assert cost_of(problem, small, mapping)["cycles"] == pytest.approx(cost["cycles"])


def test_rlc_ratio():
    assert rlc_ratio(0.0, V1) == 1.0
    # 21-bit (run, level) pairs, three per 64-bit word: (0.5 + 0.5/32) pairs x 64/3 bits / 16
    assert rlc_ratio(0.5, V1) == pytest.approx((0.5 + 0.5 / 32) * 64 / 3 / 16)
    assert rlc_ratio(0.1, V1) == 1.0  # never worse than raw
    assert rlc_ratio(0.9, V1) < rlc_ratio(0.5, V1)


# -- the simulator ------------------------------------------------------------------------------
REQUIRED = {"name", "kind", "latency_ms", "active_pes", "dram_bytes", "energy", "cycles", "utilisation",
            "accesses", "energy_by_level"}  # fmt: skip


@pytest.mark.parametrize("which", ["dense", "unfused", "o-k-i", "eq9", "modern"])
def test_simulate_every_plan_and_report_json(which, dense_plan, unfused_plan, cepd_plans):
    plan = {"dense": dense_plan, "unfused": unfused_plan, "modern": modern_plan(), **cepd_plans}[which]
    result = eyeriss.simulate(plan, V1)
    doc = json.loads(json.dumps(result.to_json()))
    assert [row["name"] for row in doc["layers"]] == [n.name for n in plan]
    for row in doc["layers"]:
        assert REQUIRED <= set(row)
        assert set(row["accesses"]) == {"dram", "glb", "array", "rf"}
        assert row["latency_ms"] >= 0 and 0 <= row["utilisation"] <= 1
        assert row["energy"] == pytest.approx(sum(row["energy_by_level"].values()))
        if row.get("fused_into"):  # on its producer's output path: ALU energy, no PEs of its own
            assert row["energy"] > 0 and row["active_pes"] == 0
        elif row["kind"] not in ("view",):
            assert row["latency_ms"] > 0 and row["energy"] > 0  # cheap, never free
    t = doc["totals"]
    assert t["latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in doc["layers"]))
    assert t["energy"] == pytest.approx(sum(r["energy"] for r in doc["layers"]))
    assert t["macs"] == plan_macs(plan)
    kinds = {n.name: r["kind"] for n, r in zip(plan, doc["layers"])}
    assert {kinds[n.name] for n in plan if n.op is Op.LINEAR} <= {"fc"}
    assert {kinds[n.name] for n in plan if n.op in (Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL)} <= {"pool"}


def test_sparse_branch_meets_the_dense_result_in_the_glb(cepd_plans):
    plan = cepd_plans["o-k-i"]
    result = eyeriss.simulate(plan, V1)
    scatters = [n for n in plan if n.op is Op.SCATTER_ADD]
    assert scatters
    for node in scatters:
        producer = next(n for n in plan if n.output == node.inputs[0])
        a, out = result.layer(producer.name), result.layer(node.name)
        # the dense part is left in the GLB: its producer writes no ofmap to DRAM, and the
        # scatter moves only b (and a residual) in and the result out, never a pass over a
        assert a.extra["dram_words"]["ofmap"] == 0 and a.extra["glb_words"]["psum_writes"] > 0
        a_words = math.prod(node.in_shapes[0])
        moved = math.prod(node.in_shapes[1]) + a_words * (1 + node.epilogue.residual)
        assert out.accesses["dram"] <= moved


def test_siblings_share_one_pass_over_their_input(cepd_plans):
    plan = cepd_plans["o-k-i"]
    result = eyeriss.simulate(plan, V1)
    stacked = [r for r in result.layers if r.mapping and r.mapping.get("stacked_with")]
    assert stacked  # the 1x1 TT step and the 1x1 sparse branch read the same value
    for row in stacked:
        m_row = conv_problem(next(n for n in plan if n.name == row.name)).m
        for name in row.mapping["stacked_with"]:
            other = result.layer(name)
            m_other = conv_problem(next(n for n in plan if n.name == name)).m
            same = {k: v for k, v in other.mapping.items() if k in ("p", "q", "m_tile", "strip_cols")}
            assert same == {k: row.mapping[k] for k in same}  # one stacked conv, one mapping
            # each is charged its share of the filters
            assert row.processing_cycles / m_row == pytest.approx(other.processing_cycles / m_other)


def test_zeros_shrink_dram_and_gate_macs(dense_plan):
    sparse = eyeriss.simulate(dense_plan, V1, zeros=0.8).totals
    dense = eyeriss.simulate(dense_plan, V1, zeros=0.0).totals
    assert sparse["macs"] == dense["macs"]
    assert sparse["dram_bytes"] < dense["dram_bytes"]
    assert sparse["energy_by_level"]["mac"] < dense["energy_by_level"]["mac"]
    named = eyeriss.simulate(dense_plan, V1, zeros={"stem": 0.9, "default": 0.0})
    assert named.totals["dram_bytes"] < dense["dram_bytes"]
    with pytest.raises(CEPDError, match="neither a node nor a value"):
        eyeriss.simulate(dense_plan, V1, zeros={"nope": 0.5})
    with pytest.raises(CEPDError, match="fraction"):
        eyeriss.simulate(dense_plan, V1, zeros=1.5)


def test_batch_multiplies_the_plans_batch():
    torch.manual_seed(0)
    model = TwoConvs().eval()
    one, four = lower(model, (1, 16, 16, 16)), lower(model, (4, 16, 16, 16))
    scaled, lowered = eyeriss.simulate(one, V1, batch=4).totals, eyeriss.simulate(four, V1).totals
    for key in ("latency_ms", "energy", "dram_bytes", "macs"):
        assert scaled[key] == pytest.approx(lowered[key])
    with pytest.raises(CEPDError, match="batch"):
        eyeriss.simulate(one, V1, batch=0)
    with pytest.raises(CEPDError, match="objective"):
        eyeriss.simulate(one, V1, objective="speed")


def test_a_bigger_faster_chip_is_faster(dense_plan):
    slow, fast = eyeriss.simulate(dense_plan, V1).totals, eyeriss.simulate(dense_plan, SCALED).totals
    assert fast["latency_ms"] < slow["latency_ms"]
    assert fast["macs"] == slow["macs"]


def test_filter_loads_stall_without_double_buffering():
    buffered = dataclasses.replace(V1, rf=dataclasses.replace(V1.rf, filter_double_buffered=True))
    _, stall = search(CONV3, V1, "latency")
    _, overlap = search(CONV3, buffered, "latency")
    assert stall["filter_load_cycles"] > 0 == overlap["filter_load_cycles"]
    assert overlap["processing_cycles"] < stall["processing_cycles"]


def test_table_and_plot(dense_plan, tmp_path):
    result = eyeriss.simulate(dense_plan, V1)
    text = table(result)
    assert all(n.name in text for n in dense_plan) and "total:" in text
    out = plot(result, tmp_path / "e.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["e.png"]  # no temporary file left behind


def test_mapping_search_output_is_deterministic():
    a = search(PROBLEMS["odd ranks"], V1, "latency")
    mapper._search.cache_clear()
    b = search(PROBLEMS["odd ranks"], V1, "latency")
    assert a[0] == b[0] and np.isclose(a[1]["cycles"], b[1]["cycles"])


# -- the modern-network ops (issue 19): access counts from the shapes ------------------------
RAW = dataclasses.replace(V1, dram=dataclasses.replace(V1.dram, compression="none"))  # 1 DRAM word / value


@pytest.fixture(scope="module")
def modern():
    plan = modern_plan()
    return plan, eyeriss.simulate(plan, RAW)


def _acc(row) -> tuple:
    return tuple(row.accesses[k] for k in ("dram", "glb", "array", "rf"))


def test_copies_move_the_elements_they_output(modern):
    _, result = modern
    # PAD 8x8 -> 10x10 (8 channels): 512 in, 800 out (the border made on chip); the GLB takes the
    # input from DRAM, sends it to the PEs, takes the padded map back, sends it to DRAM
    assert _acc(result.layer("pad")) == (512 + 800, 512 + 512 + 800 + 800, 512 + 800, 0)
    # SLICE channels [0, 3) and [3, 8) of an 8x8 map: only the kept channels move, in and out
    for name, kept in (("lo", 3 * 64), ("hi", 5 * 64)):
        assert _acc(result.layer(name)) == (2 * kept, 4 * kept, 2 * kept, 0)
    # nearest 12x12 -> 6x6 samples rows and columns 0, 2, ..., 10: 36 of 144 pixels come in
    assert _acc(result.layer("down")) == (288 + 288, 4 * 288, 2 * 288, 0)
    # bilinear 8x8 -> 12x12 reads all 64 pixels once from DRAM, four taps per output from the GLB,
    # four multiply-adds per output (3 RF accesses each)
    out = 8 * 144
    assert _acc(result.layer("up")) == (512 + out, 512 + 4 * out + out + out, 4 * out + out, 3 * 4 * out)
    # align_corners 6x6 -> 9x9: every source row and column is a tap
    out = 8 * 81
    assert _acc(result.layer("corners")) == (288 + out, 288 + 4 * out + 2 * out, 5 * out, 3 * 4 * out)


def test_a_strided_1x1_pool_reads_only_the_pixels_it_keeps():
    b = _Builder(0)
    b.shapes["x"] = (1, 8, 8, 8)
    b.add(Op.MAXPOOL, "sub", ("x",), (1, 8, 4, 4), attrs=PoolAttrs((1, 1), (2, 2)))  # a CEPD subsample
    b.add(Op.MAXPOOL, "pool", ("x",), (1, 8, 3, 3), attrs=PoolAttrs((3, 3), (2, 2)))  # rows 0-6
    b.add(Op.ADD, "both", ("x", "x"), (1, 8, 8, 8))
    plan = Plan("x", (1, 8, 8, 8), "both", b.nodes, b.consts)
    verify(plan)
    result = eyeriss.simulate(plan, RAW)
    # 16 of each channel's 64 pixels in, 16 out, one op each
    assert _acc(result.layer("sub")) == (128 + 128, 4 * 128, 2 * 128, 3 * 128)
    # a 3x3 window at stride 2 on 8 pixels covers 0-6: 49 of 64 in, 9 out, 9 ops each
    assert _acc(result.layer("pool")) == (392 + 72, 2 * 392 + 2 * 72, 392 + 72, 3 * 9 * 72)


def test_resize_sources_follow_torch():
    nearest, half, corners = (ResizeAttrs((0, 0), m, a) for m, a in
                              (("nearest", False), ("bilinear", False), ("bilinear", True)))  # fmt: skip
    assert resize_sources(12, 6, nearest) == [(0,), (2,), (4,), (6,), (8,), (10,)]
    assert resize_sources(3, 7, nearest) == [(0,), (0,), (0,), (1,), (1,), (2,), (2,)]
    # half-pixel: src = (d + 0.5) * 4 / 2 - 0.5 = 0.5, 2.5
    assert resize_sources(4, 2, half) == [(0, 1), (2, 3)]
    assert resize_sources(2, 4, half)[0] == (0, 1) and resize_sources(2, 4, half)[-1] == (1, 1)
    assert resize_sources(6, 9, corners)[-1] == (5, 5) and resize_sources(6, 9, corners)[4] == (2, 3)


def test_mul_reads_both_operands_and_layernorm_reads_twice_from_the_glb(modern):
    _, result = modern
    # same-shape MUL: both 512-value operands in, the product out, one multiply per output
    assert _acc(result.layer("mul")) == (3 * 512, 2 * 1024 + 512 + 512, 1024 + 512, 3 * 512)
    # broadcast MUL (squeeze-excitation; its big operand is read by the pooling too, and the gate
    # depends on all of it, so nothing fuses): the 512 values and the 8-value gate
    assert _acc(result.layer("se")) == (520 + 512, 2 * 520 + 512 + 512, 520 + 512, 3 * 512)
    # LAYERNORM over 8 channels at 64 positions: DRAM once, the GLB twice (statistics, normalise),
    # scale and shift (16 words) straight into the spads; 5 ops per value + 4 per position
    ops = 5 * 512 + 4 * 64
    assert _acc(result.layer("ln")) == (512 + 512 + 16, 512 + 2 * 512 + 512 + 512, 2 * 512 + 512 + 16,
                                        3 * ops + 16)  # fmt: skip
    assert result.layer("ln").energy_by_level["mac"] == ops * RAW.mac_energy_rel


def test_layernorm_wider_than_the_glb_reads_dram_twice():
    b = _Builder(0)
    b.shapes["x"] = (1, 8, 4, 4)
    scale, shift = b.const("s", (8,), 0.1, 1.0), b.const("t", (8,))
    b.add(Op.LAYERNORM, "ln", ("x",), (1, 8, 4, 4), attrs=NormAttrs(), weights=(scale, shift))
    plan = Plan("x", (1, 8, 4, 4), "ln", b.nodes, b.consts)
    verify(plan)
    fits = eyeriss.simulate(plan, RAW).layer("ln")
    assert fits.accesses["dram"] == 128 + 128 + 16
    tiny = dataclasses.replace(RAW, glb=dataclasses.replace(RAW.glb, usable_kib=4 * 2 / 1024))  # 4 words
    row = eyeriss.simulate(plan, tiny).layer("ln")
    assert row.accesses["dram"] == 2 * 128 + 128 + 16 and row.accesses["glb"] == fits.accesses["glb"] + 128


def test_activations_fuse_into_the_output_path(modern):
    plan, result = modern
    # conv -> SiLU and se.fc -> hardsigmoid: the conv writes the activated map; slices -> GELU /
    # hardswish; LAYERNORM -> PReLU -> leaky ReLU (a chain, all on the normalise pass's way out)
    fused = output_fusions(plan)
    assert fused == {"silu": "conv", "gate": "se.fc", "gelu": "lo", "hardswish": "hi", "prelu": "ln",
                     "leaky": "ln"}  # fmt: skip
    for name, producer in fused.items():
        row, node = result.layer(name), next(n for n in plan if n.name == name)
        ops = math.prod(node.out_shape) * ACT_OPS[node.attrs.kind]
        slopes = 8 if node.attrs.kind == "prelu" else 0  # loaded like filters
        assert _acc(row) == (slopes, 0, slopes, 3 * ops + slopes) and row.extra["fused_into"] == producer
        assert row.energy_by_level["mac"] == ops
    # the producer writes the final value once: the conv's 512 outputs, the LN's 512
    assert result.layer("conv").extra["dram_words"]["ofmap"] == 512
    # tanh and sigmoid read a value two ops read: passes of 3 ops per output
    for name in ("tanh", "sigmoid"):
        assert _acc(result.layer(name)) == (1024, 2048, 1024, 3 * 3 * 512)


def _gated_plan() -> Plan:
    """x -> conv+ReLU -> {tanh, sigmoid, pad, nearest/bilinear resize, mul} -> 1x1 convs; and a
    conv whose output is scaled by a vector computed before it (a fusable broadcast MUL)."""
    b = _Builder(1)
    b.shapes["x"] = (1, 8, 8, 8)
    w = b.const("w", (8, 8, 1, 1))
    conv = dict(weights=(w,), attrs=ConvAttrs((1, 1), cin=8, cout=8))
    r = b.add(Op.CONV, "r", ("x",), (1, 8, 8, 8), epilogue=Epilogue(act="relu"), **conv)
    outs = [
        b.add(Op.ACT, "tanh", (r,), (1, 8, 8, 8), attrs=ActAttrs("tanh")),
        b.add(Op.ACT, "sigmoid", (r,), (1, 8, 8, 8), attrs=ActAttrs("sigmoid")),
        b.add(Op.PAD, "pad", (r,), (1, 8, 10, 10), attrs=PadAttrs((1, 1, 1, 1))),
        b.add(Op.RESIZE, "near", (r,), (1, 8, 16, 16), attrs=ResizeAttrs((16, 16))),
        b.add(Op.RESIZE, "bil", (r,), (1, 8, 16, 16), attrs=ResizeAttrs((16, 16), "bilinear")),
        b.add(Op.MUL, "mul", (r, r), (1, 8, 8, 8), attrs=NoAttrs()),
    ]
    for i, x in enumerate(outs):
        b.add(Op.CONV, f"c{i}", (x,), (1, 8, *b.shapes[x][2:]), **conv)
    g = b.add(Op.GLOBAL_AVGPOOL, "gap", ("x",), (1, 8, 1, 1))
    v = b.add(Op.ACT, "v", (g,), (1, 8, 1, 1), attrs=ActAttrs("sigmoid"))
    late = b.add(Op.CONV, "late", (r,), (1, 8, 8, 8), **conv)
    b.add(Op.MUL, "scaled", (late, v), (1, 8, 8, 8), attrs=NoAttrs())
    head = b.add(Op.SLICE, "head", ("scaled",), (1, 4, 8, 8), attrs=SliceAttrs(0, 4))
    plan = Plan("x", (1, 8, 8, 8), head, b.nodes, b.consts)
    verify(plan)
    return plan


def test_zero_gating_follows_what_each_op_does_to_zeros():
    plan = _gated_plan()
    z = zero_fractions(plan, 0.5)
    # tanh(0) = 0 keeps the ReLU's zeros; sigmoid(0) = 0.5 makes a dense map; the pad adds its
    # 36-pixel border per channel; nearest copies; bilinear blends are taken as dense; a product
    # is zero where either factor is
    assert (z["r"], z["tanh"], z["sigmoid"]) == (0.5, 0.5, 0.0)
    assert z["pad"] == pytest.approx((0.5 * 64 + 36) / 100)
    assert (z["near"], z["bil"], z["mul"]) == (0.5, 0.0, 0.75)
    result = eyeriss.simulate(plan, V1, zeros=0.5)
    convs = [result.layer(f"c{i}") for i in range(6)]
    # zero gating: the MAC energy of each 1x1 conv follows its ifmap's zeros
    for row, value in zip(convs, ("tanh", "sigmoid", "pad", "near", "bil", "mul")):
        assert row.energy_by_level["mac"] == pytest.approx(row.macs * (1 - z[value])), value
    # a broadcast MUL whose vector exists before the conv runs is applied on the conv's way out:
    # it loads the 8-value vector and multiplies each of the 512 outputs
    fused = result.layer("scaled")
    assert fused.extra["fused_into"] == "late"
    assert _acc(fused) == (8, 16, 8, 3 * 512)
    assert result.layer("late").extra["dram_words"]["ofmap"] == 512  # it writes the product


# -- issue 23: the TT chain in the GLB, output-width tiles, mapping constraints ----------------
def test_the_tt_chain_stays_in_the_glb(cepd_plans, monkeypatch):
    plan = cepd_plans["o-k-i"]
    for spec in (V1, SCALED):
        kept = eyeriss.simulate(plan, spec)
        chained = []
        for block in plan.blocks():
            t0, t1, t2 = block.steps
            rows = [kept.layer(n.name) for n in (t0, t1, t2)]
            in_glb = [r.mapping.get("in_glb") for r in rows]
            if "stacked_with" not in rows[0].mapping:
                # c1: t0 leaves its output in the GLB, t1 reads it there and leaves its own, t2 reads that
                assert in_glb == [["ofmap"], ["ifmap", "ofmap"], ["ifmap"]]
                assert rows[1].extra["dram_words"]["ifmap"] == rows[1].extra["dram_words"]["ofmap"] == 0
                chained.append(t0.output)
            else:  # c2 and c3: t0 runs stacked with the other block's t0, so its output goes to DRAM
                assert {t0.name, *rows[0].mapping["stacked_with"]} >= {"c2.t0", "c3.t0"}
                assert in_glb == [None, ["ofmap"], ["ifmap"]]
            assert rows[2].extra["dram_words"]["ifmap"] == rows[2].extra["glb_words"]["ifmap_writes"] == 0
            chained.append(t1.output)
        monkeypatch.setattr(simulator, "chain_residency", lambda ctx: frozenset())
        through_dram = eyeriss.simulate(plan, spec)
        monkeypatch.undo()
        assert not any((r.mapping or {}).get("in_glb") for r in through_dram.layers)
        # each kept intermediate (no ReLU: one DRAM word per value) saves one write and one read
        words = sum(math.prod(n.out_shape) for n in plan if n.output in chained)
        assert through_dram.totals["accesses"]["dram"] - kept.totals["accesses"]["dram"] == 2 * words
        assert kept.totals["latency_ms"] <= through_dram.totals["latency_ms"]
        assert kept.totals["energy"] < through_dram.totals["energy"]


def test_the_chain_keeps_only_what_fits_the_glb(cepd_plans):
    plan = cepd_plans["o-k-i"]
    # 1,536 words: below the smallest intermediate (7 x 16 x 16 = 1,792), so all go through DRAM
    small = dataclasses.replace(V1, glb=dataclasses.replace(V1.glb, usable_kib=3))
    assert not any((r.mapping or {}).get("in_glb") for r in eyeriss.simulate(plan, small).layers)


def test_a_fused_scatter_streams_while_its_producer_computes(cepd_plans):
    plan = cepd_plans["o-k-i"]
    for spec in (V1, SCALED):
        result = eyeriss.simulate(plan, spec)
        for node in (n for n in plan if n.op is Op.SCATTER_ADD):
            row = result.layer(node.name)
            prod = result.layer(next(n.name for n in plan if n.output == node.inputs[0]))
            dram = row.accesses["dram"] / spec.dram_words_per_cycle
            if spec.dram.overlaps_processing:  # the pair takes as long as one op doing both
                w = prod.extra["dram_words"]
                both = spec.transfer_cycles(prod.processing_cycles + row.processing_cycles,
                                            w["ifmap"] + w["ofmap"] + w["residual"] + row.accesses["dram"],
                                            w["filters"])  # fmt: skip
                assert prod.cycles + row.cycles == pytest.approx(max(both, prod.cycles))
                assert row.cycles < dram
            else:  # the chip waits for every activation transfer
                assert row.cycles == pytest.approx(row.processing_cycles + dram)


# VGG-16 CONV1-2 at batch 3: the layer where a ZigZag comparison found a 14% faster mapping
CONV1_2 = ConvProblem(3, 1, 64, 64, 226, 226, 3, 3, 224, 224, pad_words=226 * 226 - 224 * 224)


def _constrained(*rules: Constraint):
    return dataclasses.replace(V1, constraints=rules)


def test_width_tiles_are_tried_even_when_whole_rows_fit():
    whole_rows, whole = search(CONV1_2, _constrained(Constraint((("width_tiles", 1, 1),))))
    mapping, cost = search(CONV1_2, V1)
    assert whole_rows.width_tiles == 1 < mapping.width_tiles
    assert cost["processing_cycles"] <= 0.9 * whole["processing_cycles"]  # 191 ms against 217 ms
    assert cost["cycles"] < whole["cycles"]
    _check_mapping(CONV1_2, V1, mapping, cost)


def test_constraints_pin_the_published_mapping():
    chip = Mapping(3, 13, 1, 4, 1, 1, 1, 16, 4, 64, 4, 13)
    pins = Constraint(tuple((k, v, v) for k, v in chip.as_dict().items()))
    mapping, cost = search(CONV3, _constrained(pins))
    assert mapping == chip
    assert cost["cycles"] == pytest.approx(cost_of(CONV3, V1, chip)["cycles"])


@pytest.mark.parametrize("name", ["3x3", "1x1 strided", "grouped", "odd ranks", "wide"])
def test_constraints_bound_the_search_where_they_apply(name):
    problem = PROBLEMS[name]
    free_mapping, free = search(problem, V1)
    mapping, cost = search(problem, _constrained(Constraint((("psum_channels", None, 1),))))
    _check_mapping(problem, V1, mapping, cost)
    assert mapping.q * mapping.channel_sets == 1
    assert cost["cycles"] * (1 + TIE) >= free["cycles"]  # a subset of the mappings never does better
    # a rule whose `when` does not match changes nothing
    elsewhere = Constraint((("psum_channels", None, 1),), when=(("e", problem.e + 1, None),))
    assert search(problem, _constrained(elsewhere))[0] == free_mapping


def test_a_minimum_beyond_the_layer_is_the_layer():
    problem = PROBLEMS["odd ranks"]  # 13 filters: p >= 16 means all 13 in each PE
    assert search(problem, _constrained(Constraint((("p", 16, None),))))[0].p == 13


def test_impossible_constraints_are_one_line_errors():
    with pytest.raises(CEPDError, match="within its mapping constraints") as info:
        search(CONV3, _constrained(Constraint((("p", 100, 100),))))  # the psum spad holds 24
    assert "\n" not in str(info.value)
