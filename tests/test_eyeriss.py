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
from cepd_deploy.plan.ir import WEIGHTED, Op
from cepd_deploy.targets import eyeriss
from cepd_deploy.targets.base import Kind
from cepd_deploy.targets.eyeriss import mapper
from cepd_deploy.targets.eyeriss.mapper import PARAMS, TIE, Mapping, cost_of, evaluate, search
from cepd_deploy.targets.eyeriss.problem import ConvProblem, ceil_div, conv_problem
from cepd_deploy.targets.eyeriss.report import plot, table
from cepd_deploy.targets.eyeriss.simulator import HANDLERS, rlc_ratio
from cepd_deploy.targets.eyeriss.spec import load_spec

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
    seen = {n.op for p in (dense_plan, unfused_plan, *cepd_plans.values()) for n in p}
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
                    tiles = itertools.product(range(pp * t, p.m + pp * t, pp * t),
                                              range(e * se, p.e + e * se, e * se), range(b, p.n + b, b))
                    found += [(sr, e, se, t, r, g, b, pp, qq, min(mt, p.m), min(nt, p.n), min(et, p.e))
                              for mt, et, nt in tiles]
    table = np.array(found, dtype=np.int64)
    cost = evaluate(p, spec, {k: table[:, i] for i, k in enumerate(PARAMS)})
    return {k: float(np.where(cost["fits"], cost[k], np.inf).min()) for k in ("cycles", "energy")}


SMALL = [ConvProblem(4, 1, 3, 8, 19, 19, 5, 5, 4, 4, 4, 4),
         ConvProblem(2, 2, 6, 10, 9, 9, 3, 3, 7, 7, pad_words=32)]


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


@pytest.mark.parametrize("which", ["dense", "unfused", "o-k-i", "eq9"])
def test_simulate_every_plan_and_report_json(which, dense_plan, unfused_plan, cepd_plans):
    plan = {"dense": dense_plan, "unfused": unfused_plan, **cepd_plans}[which]
    result = eyeriss.simulate(plan, V1)
    doc = json.loads(json.dumps(result.to_json()))
    assert [row["name"] for row in doc["layers"]] == [n.name for n in plan]
    for row in doc["layers"]:
        assert REQUIRED <= set(row)
        assert set(row["accesses"]) == {"dram", "glb", "array", "rf"}
        assert row["latency_ms"] >= 0 and 0 <= row["utilisation"] <= 1
        assert row["energy"] == pytest.approx(sum(row["energy_by_level"].values()))
        if row["kind"] not in ("view",):
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
