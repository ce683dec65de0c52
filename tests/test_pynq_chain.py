"""PYNQ-Z1 target: consecutive groups chained on chip (intermediates in the scratch, not DDR).

The DDR traffic of a chain is counted exactly from the shapes; the scratch placement never lets
two values that are live together overlap and stays within the buffer; the model chooses a
chain only where it pays; the C-simulation of chained groups is bit-exact with the reference.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from cepd_deploy import convert, lower
from cepd_deploy.targets.pynq_z1 import fixed, fxp, isa
from cepd_deploy.targets.pynq_z1.blob import Wmem, views
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.groups import Group, merge, partition
from cepd_deploy.targets.pynq_z1.model import estimate
from cepd_deploy.targets.pynq_z1.program import choose_chains, compile_program
from cepd_deploy.targets.pynq_z1.tiling import Ctx, Tiling, tile_group
from tests.pynq_helpers import CSIM, cepd_resnet20

W = 2  # bytes per 16-bit word


class TwoPointwise(nn.Module):
    """1x1 (8 -> 16, ReLU) then 1x1 (16 -> 8): the 16-channel value is the chain's intermediate."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 16, 1)
        self.b = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Block(nn.Module):
    """A 3x3 conv whose output is read twice (chain input and residual), then 1x1 -> 3x3 with the
    residual on the last (a chain with a halo in the scratch), then a max pool."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 1)
        self.c3 = nn.Conv2d(12, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = torch.relu(self.c2(y))
        return self.pool(torch.relu(self.c3(z) + y))


class Narrowing(nn.Module):
    """1x1 (16 -> 32), 3x3 (32 -> 16), 1x1 (16 -> 8); converted, the last two are CEPD layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(16, 32, 1)
        self.b = nn.Conv2d(32, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@cache
def cepd_narrowing() -> nn.Module:
    torch.manual_seed(0)
    return convert(Narrowing().eval(), flops_remaining=0.5, input_shape=(1, 16, 12, 12)).eval()


def _plan(net: nn.Module, shape):
    torch.manual_seed(0)
    return lower(net.eval(), shape)


def _dry(plan, cfg: EngineConfig) -> Ctx:
    return Ctx(plan, None, cfg, Wmem(None, plan), defaultdict(int),
               {n.name: i for i, n in enumerate(plan.nodes)}, views(plan))  # fmt: skip


def _tilings(plan, cfg: EngineConfig, chain: bool = True) -> list[Tiling]:
    return [t for t in choose_chains(_dry(plan, cfg), partition(plan), chain) if isinstance(t, Tiling)]


def test_ddr_traffic_of_a_chain_is_exact():
    """Unchained: x, w_a, out_a (written, then read), w_b, out_b. Chained: the 16-channel
    intermediate never reaches DDR. Weights stream once per tile and 4-channel chunk."""
    h = w = 14
    plan = _plan(TwoPointwise(), (1, 8, h, w))
    px = h * w
    w_a, w_b = 16 * 8 * W, 8 * 16 * W  # 4 chunks x (4 x 8 words); 2 chunks x (4 x 16 words)
    before = estimate(plan, chain_groups=False)
    after = estimate(plan)
    (t_ab,) = (g["tiles"] for g in compile_program(plan, EngineConfig()).groups)  # one chained group
    t_a, t_b = (g["tiles"] for g in compile_program(plan, EngineConfig(), chain_groups=False).groups)
    x, mid, out = 8 * px * W, 16 * px * W, 8 * px * W
    assert before.ddr_bytes == x + t_a * w_a + mid + mid + t_b * w_b + out
    assert after.ddr_bytes == x + t_ab * (w_a + w_b) + out
    assert before.ddr_bytes - after.ddr_bytes >= 2 * mid - (t_ab - 1) * (w_a + w_b)


def test_the_model_chains_only_where_it_pays():
    """CEPD ResNet-20: each basic block's two layers run as one group (fewer cycles and DDR bytes
    than through DDR), and every chosen segment is no slower than its parts run apart."""
    plan = lower(cepd_resnet20(), (1, 3, 32, 32))
    cfg = EngineConfig()
    chained, apart = estimate(plan), estimate(plan, chain_groups=False)
    assert chained.total_cycles < 0.95 * apart.total_cycles
    assert chained.ddr_bytes < 0.8 * apart.ddr_bytes
    assert chained.macs >= apart.macs  # halo rows of the chain's 3x3 steps may be recomputed
    names = [g["name"] for g in compile_program(plan, cfg).groups]
    assert sum("+" in n for n in names) == 9  # 3 stages x 3 blocks: conv1+conv2
    assert not any("+" in g["name"] for g in compile_program(plan, cfg, chain_groups=False).groups)
    ctx = _dry(plan, cfg)
    parts = {g.name: g for g in partition(plan) if isinstance(g, Group)}
    for t in _tilings(plan, cfg):
        if "+" in t.group.name:
            alone = [tile_group(ctx, parts[n]) for n in t.group.name.split("+")]
            assert t.cycles <= sum(a.cycles for a in alone)


def test_a_cepd_layer_inside_a_chain():
    """Two CEPD layers of 16 and 8 output channels in one chain: the first one's scatter-add
    (its own 16-channel map) writes the scratch, the second's writes DDR."""
    plan = _plan(cepd_narrowing(), (1, 16, 12, 12))
    blocks = plan.blocks()
    assert [b.layer for b in blocks] == ["b", "c"] and all(b.scatter is not None for b in blocks)
    (t,) = _tilings(plan, EngineConfig())
    assert t.group.name == "a+b+c"
    inner = next(s for s in t.group.steps if s.scatter is blocks[0].scatter)
    assert inner.dst != t.group.out and inner.dst_img[0] == 16 and t.group.out_img[0] == 8
    prog = compile_program(plan, EngineConfig())
    for b, channels in zip(blocks, (16, 8)):  # each scatter map covers its own output channels
        assert prog.wmem.sections[f"{b.scatter.name}#map"][2] == channels


def _check_scratch(t: Tiling, cfg: EngineConfig) -> int:
    """Assert no two scratch values live at once overlap; return the scratch words used."""
    g, lay = t.group, t.layout
    steps = g.steps
    born = {s.dst: k for k, s in enumerate(steps)}
    dies = {v: max(k for k, s in enumerate(steps) if v in (s.src, s.scatter_b)) for v in g.buffered}
    chans = {s.dst: s.dst_img[0] for s in steps}
    spans = {v: (lay.base[v], lay.base[v] + chans[v] * lay.cstride[v]) for v in g.buffered[1:]}
    for u in spans:
        for v in spans:
            live_together = u != v and born[u] <= dies[v] and born[v] <= dies[u]
            if live_together:
                assert spans[u][1] <= spans[v][0] or spans[v][1] <= spans[u][0], (g.name, u, v)
    used = max((e for _, e in spans.values()), default=0)
    assert used <= cfg.scratch_words
    return used


def test_chains_respect_the_scratch_budget():
    """Every chosen group fits the scratch with live values apart; with a scratch too small for
    the intermediate of any tile (16 channels x the narrowest tile's 4 pixels > 48 words), the
    chain is no candidate and the layers run through DDR."""
    plan = lower(cepd_resnet20(), (1, 3, 32, 32))
    cfg = EngineConfig()
    used = [_check_scratch(t, cfg) for t in _tilings(plan, cfg) if len(t.group.steps) > 1]
    assert max(used) > cfg.scratch_words // 4  # the budget is really in play
    small = EngineConfig(scratch_words=48)
    pw = _plan(TwoPointwise(), (1, 8, 14, 14))
    assert any("+" in t.group.name for t in _tilings(pw, cfg))
    assert not any("+" in t.group.name for t in _tilings(pw, small))
    assert tile_group(_dry(pw, small), merge([g for g in partition(pw) if isinstance(g, Group)])) is None


def test_scratch_reuses_dead_values():
    """A value's space is reused once its last reader has run: a four-layer 1x1 chain needs the
    space of two intermediates at a time, not three."""

    class Four(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(16, 16, 1) for _ in range(4))

        def forward(self, x):
            for c in self.convs:
                x = torch.relu(c(x))
            return x

    plan = _plan(Four(), (1, 16, 28, 28))
    cfg = EngineConfig()
    g = merge([g for g in partition(plan) if isinstance(g, Group)])
    t = tile_group(_dry(plan, cfg), g)
    assert len(g.steps) == 4
    lay = t.layout
    words = 16 * lay.cstride[g.buffered[1]]
    assert _check_scratch(t, cfg) == 2 * words
    assert lay.base[g.buffered[3]] == lay.base[g.buffered[1]]


# -- C-simulation ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from cepd_deploy.targets.pynq_z1 import csim

    mp = pytest.MonkeyPatch()
    mp.setenv("CEPD_DEPLOY_CACHE", str(tmp_path_factory.mktemp("cepd-cache")))
    yield csim.build_sim(EngineConfig())
    mp.undo()


@pytest.mark.slow
@CSIM
@pytest.mark.parametrize(
    ("net", "shape"),
    [(Block(), (1, 4, 15, 13)), (TwoPointwise(), (1, 8, 14, 14)), ("cepd", (1, 16, 12, 12))],
)
def test_chained_groups_are_bit_exact(sim, tmp_path, net, shape):
    """Every value left in DDR (no arena reuse) equals the fixed-point reference, with chained
    groups: a halo in the scratch, the residual on the chain's last step, CEPD layers inside."""
    from cepd_deploy.targets.pynq_z1 import csim
    from cepd_deploy.targets.pynq_z1.render import render_engine

    plan = _plan(cepd_narrowing() if net == "cepd" else net, shape)
    rng = np.random.default_rng(0)
    q = fixed.quantize(plan, rng.standard_normal((4, *shape[1:])), 16)
    prog = compile_program(plan, EngineConfig(), q, reuse_arena=False)
    assert any("+" in g["name"] for g in prog.groups)
    xq = fxp.quantize_input(q, rng.standard_normal(shape))
    env = fxp.run(q, xq, quantized=True, keep=True)
    (tmp_path / "w.bin").write_bytes(prog.blob(q))
    render_engine(EngineConfig(), tmp_path / "e")
    tb = csim.build_testbench(sim, tmp_path / "e" / "tb", tmp_path / "tb")
    xq.astype("<i2").tofile(tmp_path / "in.bin")
    arena = tmp_path / "arena.bin"
    files = [tmp_path / "w.bin", tmp_path / "in.bin", tmp_path / "out.bin"]
    subprocess.run([str(tb), *map(str, files), "1", str(arena)], check=True, capture_output=True)
    got = np.fromfile(arena, dtype="<i2")
    assert got[0] == isa.STATUS["ST_OK"]
    for value, off in prog.arena.items():
        ref = env[value].reshape(-1)
        assert np.array_equal(got[off : off + ref.size], ref), value
