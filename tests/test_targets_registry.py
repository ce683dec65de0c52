"""One test over the registry: every Plan op against every target that claims it, with the
reference interpreter as the oracle; and a toy target that plugs in with one registry line and
is reached by every command."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cepd_deploy import convert, targets
from cepd_deploy.cli import main
from cepd_deploy.frontend.lower import lower
from cepd_deploy.plan.ir import Op
from cepd_deploy.plan.reference import run as reference
from cepd_deploy.targets.base import Built, Estimate, Kind, Target, option
from tests.conftest import randomize_bn
from tests.plans import modern_plan

TOL = 1e-4  # max abs error <= TOL x max|y| (float targets)


class Misc(nn.Module):
    """Every non-CEPD op: an unfoldable BN (AFFINE), a ReLU and an ADD read twice (no epilogue
    fusion), CONCAT, both pools, global average pooling, FLATTEN, LINEAR."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.a, self.b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 1)
        self.pool, self.avg = nn.MaxPool2d(2), nn.AvgPool2d(3, stride=1, padding=1)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(18, 5)

    def forward(self, x):
        x = self.bn(x)
        y = torch.relu(x)
        a, b = self.a(y), self.b(x)
        s = a + b
        c = torch.cat([a, b, s], 1)
        return self.fc(torch.flatten(self.gap(self.avg(self.pool(c))), 1))


def _cepd() -> nn.Module:
    """CEPD layers with permutes (the eq9 layout), a subsampling 1x1 layer and S branches."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1, stride=2),
                        nn.Conv2d(32, 32, 1, stride=2))  # fmt: skip
    return convert(randomize_bn(net), flops_remaining=0.55, layout="eq9", input_shape=(1, 16, 8, 8),
                   convert_first=True).eval()  # fmt: skip


@pytest.fixture(scope="module")
def plans():
    torch.manual_seed(0)
    return {"misc": lower(randomize_bn(Misc()), (1, 4, 8, 8)), "cepd": lower(_cepd(), (1, 16, 8, 8)),
            "modern": modern_plan()}  # fmt: skip


def test_the_plans_cover_every_op(plans):
    used = {n.op for p in plans.values() for n in p.nodes}
    assert used == set(Op)
    assert len(plans["cepd"].blocks()) == 3 and all(b.sparse is not None for b in plans["cepd"].blocks())


def _cases():
    return [(t, p) for t in targets.REGISTRY if t != "cuda" for p in ("misc", "cepd", "modern")]


@pytest.mark.slow
@pytest.mark.parametrize("name,which", _cases())
def test_every_target_runs_every_op_it_claims(name, which, plans, tmp_path):
    target, plan = targets.get(name), plans[which]
    needed = {n.op for n in plan.nodes}
    assert needed <= target.ops, f"{name} does not claim {sorted(o.value for o in needed - target.ops)}"
    x = np.random.default_rng(1).standard_normal(plan.input_shape).astype(np.float32)
    want = reference(plan, x).numpy()
    if target.can("runner"):
        y = np.asarray(target.runner(plan, 1, tmp_path)(x))
        assert np.abs(y - want).max() <= TOL * np.abs(want).max()
    if target.can("estimate"):
        est = target.estimate(plan)
        assert math.isfinite(est.latency_ms) and est.latency_ms > 0 and est.text
    if target.can("build") and not target.can("runner"):
        built = target.build(plan, tmp_path / "out", target.options(csim=True))
        assert built.ok, built.problem


# -- a toy target: one class, one registry line ---------------------------------------------
class Toy(Target):
    """Counts MACs at one MAC per nanosecond; builds a JSON file; runs the reference."""

    name = "toy"
    kind = Kind.MODEL
    summary = "a toy target for the registry test"

    @dataclass(frozen=True)
    class Options:
        speed_gmacs: float = option(1.0, "MACs per nanosecond")

    def _estimate(self, plan, options):
        from cepd_deploy.plan.cost import plan_macs

        ms = plan_macs(plan) / (options.speed_gmacs * 1e6)
        return Estimate(ms, {"totals": {"latency_ms": ms}}, f"toy: {ms:.3f} ms")

    def _build(self, plan, out: Path, options):
        out.mkdir(parents=True, exist_ok=True)
        (out / "toy.json").write_text(json.dumps({"ops": len(plan.nodes)}))
        return Built({"ops": len(plan.nodes), "speed_gmacs": options.speed_gmacs}, "toy built")


@pytest.fixture
def toy():
    targets.register("toy", Toy())
    yield
    targets.REGISTRY.pop("toy")
    targets._loaded.pop("toy", None)


def test_a_toy_target_is_reached_by_every_command(toy, tmp_path, capsys):
    assert "toy" in targets.names("build") and "toy" in targets.names("estimate")
    assert main(["build", "resnet20", "--target", "toy", "--speed-gmacs", "2", "-o", str(tmp_path / "b"),
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["speed_gmacs"] == 2.0
    assert (tmp_path / "b" / "toy.json").is_file()
    assert main(["simulate", "resnet20", "--target", "toy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["latency_ms"] > 0
    out = tmp_path / "rows.json"
    assert main(["bench", "--model", "resnet20", "--flops-remaining", "0.5", "--targets", "toy", "--quiet",
                 "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert {r["target"] for r in rows} == {"toy"} and rows[1]["speedup"] > 1
