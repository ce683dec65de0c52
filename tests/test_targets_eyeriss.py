"""The Eyeriss Target through its public verbs (issue 20): options, estimate, the light module,
and the CEPD-layer structure the simulator's fusions read from ``plan.blocks()``."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

import cepd_deploy
from cepd_deploy import build_model, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import WEIGHTED, Role
from cepd_deploy.targets import eyeriss
from cepd_deploy.targets.base import Kind
from cepd_deploy.targets.eyeriss.report import table
from cepd_deploy.targets.eyeriss.schedule import fused_values, siblings
from cepd_deploy.targets.eyeriss.target import Eyeriss

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def resnet20():
    """Dense ResNet-20 for two images."""
    torch.manual_seed(0)
    return lower(build_model("resnet20").eval(), (2, 3, 32, 32))


@pytest.fixture(scope="module")
def cepd_resnet20():
    """ResNet-20 converted to CEPD (o-k-i layout, half the FLOPs), for one image."""
    torch.manual_seed(0)
    model = cepd_deploy.convert(
        build_model("resnet20").eval(), flops_remaining=0.5, input_shape=(1, 3, 32, 32)
    )
    return lower(model, (1, 3, 32, 32))


def test_what_the_target_is():
    target = Eyeriss()
    assert (target.name, target.kind, target.passes) == ("eyeriss", Kind.SIMULATOR, ())
    assert Eyeriss.verbs() == ("estimate",) and target.can("estimate") and not target.can("build")
    assert eyeriss.Eyeriss is Eyeriss  # the package names it (lazily)
    assert Eyeriss.Options() == Eyeriss.Options("eyeriss_v1", "latency", None)


def test_estimate_is_the_simulation_for_the_plans_batch(resnet20):
    target = Eyeriss()
    # options from parsed arguments: unknown names and None values are ignored
    opts = target.options(
        {"spec": "eyeriss_scaled", "objective": "energy", "zeros": 0.6, "batch": 2, "x": None}
    )
    est = target.estimate(resnet20, opts)
    result = eyeriss.simulate(resnet20, eyeriss.load_spec("eyeriss_scaled"), objective="energy", zeros=0.6)
    assert est.figures == result.to_json()
    assert est.figures["batch"] == 2 and est.figures["spec"] == "eyeriss_scaled"
    assert est.latency_ms == result.totals["latency_ms"] > result.totals["latency_ms_per_image"]
    assert est.text == table(result) and "batch 2, objective energy" in est.text
    png = io.BytesIO()
    est.draw(png)
    assert png.getvalue()[:8] == PNG


def test_default_options_simulate_eyeriss_v1_with_the_default_zeros(resnet20):
    est = Eyeriss().estimate(resnet20)
    result = eyeriss.simulate(resnet20, eyeriss.load_spec("eyeriss_v1"), zeros=eyeriss.DEFAULT_ZEROS)
    assert est.figures == result.to_json()
    other = Eyeriss().estimate(resnet20, Eyeriss.Options(zeros=0.0))
    assert other.figures["totals"]["dram_bytes"] > est.figures["totals"]["dram_bytes"]  # no RLC gain


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"objective": "speed"}, "objective must be one of latency, energy"),
        ({"zeros": 1.0}, "zeros must be a fraction"),
        ({"zeros": True}, "zeros must be a fraction"),
        ({"zeros": float("nan")}, "zeros must be a fraction"),
        ({"spec": ""}, "spec: expected a preset name"),
    ],
)
def test_bad_options_are_user_errors(kw, message):
    with pytest.raises(CEPDError, match=message):
        Eyeriss.Options(**kw)


def test_unknown_spec_and_missing_verbs_are_user_errors(resnet20, tmp_path):
    with pytest.raises(CEPDError, match="unknown Eyeriss spec"):
        Eyeriss().estimate(resnet20, Eyeriss.Options(spec="eyeriss_v9"))
    with pytest.raises(CEPDError, match="cannot build"):
        Eyeriss().build(resnet20, tmp_path)
    with pytest.raises(CEPDError, match="cannot runner"):
        Eyeriss().runner(resnet20, 1, tmp_path)


def test_target_module_and_package_import_nothing_heavy():
    code = (
        "import sys, cepd_deploy.targets.eyeriss.target as t; t.Eyeriss.Options(); "
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    heavy = {"torch", "matplotlib", "yaml", "onnx", "onnxruntime", "tvm", "scipy"}
    assert not {m.split(".")[0] for m in loaded} & heavy
    sim = {f"cepd_deploy.targets.eyeriss.{m}" for m in ("simulator", "mapper", "spec", "report")}
    assert not loaded & sim  # the verbs import the simulator


def test_fusions_follow_the_cepd_blocks(cepd_resnet20):
    plan = cepd_resnet20
    producer = plan.producer()
    blocks = [b for b in plan.blocks() if b.scatter is not None]
    # the dense TT result meets the S branch in the GLB: exactly the chain outputs a step writes
    expected = {b.chain_output for b in blocks if producer[b.chain_output].op in WEIGHTED}
    assert expected and fused_values(plan) == expected
    # a 1x1 layer's S branch and its chain's first step read the same value: one stacked conv
    groups = siblings(plan)
    pairs = [(b.sparse, b.steps[0]) for b in blocks if b.sparse.attrs.kernel == (1, 1)]
    assert pairs
    for sparse, first in pairs:
        assert first.role is Role.STEP and sparse.inputs[0] == first.inputs[0]
        assert {sparse.name, first.name} <= set(groups[sparse.name])
    est = Eyeriss().estimate(plan)
    rows = {r["name"]: r for r in est.figures["layers"]}
    for sparse, first in pairs:
        assert first.name in rows[sparse.name]["mapping"]["stacked_with"]
    for value in expected:
        assert rows[producer[value].name]["dram_words"]["ofmap"] == 0
