"""The PYNQ-Z1 Target through its public verbs (issue 20): options, build (C-simulated bit-exact),
estimate for the Plan's batch, the light module, and the fused groups read from ``plan.blocks()``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from cepd_deploy import build_model, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op, Plan, Role
from cepd_deploy.plan.verify import verify
from cepd_deploy.targets import get, pynq_z1
from cepd_deploy.targets.base import Kind
from cepd_deploy.targets.pynq_z1 import program, project
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.groups import Group, partition
from cepd_deploy.targets.pynq_z1.model import estimate, one_image
from cepd_deploy.targets.pynq_z1.summary import layer_table, text_summary
from cepd_deploy.targets.pynq_z1.target import CSIM_MISMATCH, PynqZ1
from tests.pynq_helpers import CSIM, cepd_resnet20


@pytest.fixture(scope="module")
def cepd20() -> Plan:
    return lower(cepd_resnet20(), (1, 3, 32, 32))


@pytest.fixture(scope="module")
def dense20() -> Plan:
    torch.manual_seed(0)
    return lower(build_model("resnet20").eval(), (1, 3, 32, 32))


def test_what_the_target_is():
    target = get("pynq-z1")
    assert isinstance(target, PynqZ1) and pynq_z1.PynqZ1 is PynqZ1  # the package names it (lazily)
    assert (target.name, target.kind, target.passes, target.ops) == ("pynq-z1", Kind.MODEL, (), frozenset(Op))
    assert PynqZ1.verbs() == ("build", "estimate") and not target.can("runner")
    # the defaults of the command line's flags before the Target class
    assert PynqZ1.Options() == PynqZ1.Options(16, 100.0, False, 8, 4, 0, False, None)


def test_options_from_parsed_arguments_and_their_checks():
    opts = PynqZ1().options({"bits": 12, "clock_mhz": None, "csim": True, "verify": True, "label": "m"})
    assert (opts.bits, opts.clock_mhz, opts.csim, opts.label) == (12, 100.0, True, "m")
    bad = [
        ({"bits": 40}, "--bits must be between 4 and 16"),
        ({"bits": True}, "--bits"),
        ({"clock_mhz": 0}, "--clock-mhz"),
        ({"calib": 0}, "--calib must be a whole number >= 1"),
        ({"golden": 1.5}, "--golden"),
        ({"seed": -1}, "--seed"),
        ({"csim": "yes"}, "csim must be True or False"),
        ({"label": 3}, "label must be text"),
    ]
    for kw, message in bad:
        with pytest.raises(CEPDError, match=message):
            PynqZ1.Options(**kw)


def test_estimate_is_the_model_for_the_plans_batch(cepd20):
    target = PynqZ1()
    est = target.estimate(cepd20)
    report = estimate(cepd20)
    assert est.figures == report.to_json() and est.latency_ms == report.latency_ms > 0
    assert est.draw is None
    head, table = est.text.split("\n\n", 1)
    assert table == "\n".join(layer_table(est.figures)) and "ms per image" in head
    assert all(la["name"] in est.text for la in est.figures["layers"])
    fast = target.estimate(cepd20, PynqZ1.Options(clock_mhz=200.0))
    assert fast.latency_ms < est.latency_ms and fast.figures["engine"]["clock_mhz"] == 200.0
    # two images: the engine runs one per call
    two = lower(cepd_resnet20(), (2, 3, 32, 32))
    est2 = target.estimate(two)
    assert est2.latency_ms == pytest.approx(2 * est.latency_ms, rel=1e-12)
    assert est2.figures == est.figures and "for 2 images" in est2.text
    with pytest.raises(CEPDError, match="one image"):
        estimate(two)  # the model itself takes one image


def test_one_image_is_the_plan_lowered_for_one_image(dense20):
    torch.manual_seed(0)
    two = lower(build_model("resnet20").eval(), (2, 3, 32, 32))
    one = one_image(two)
    verify(one)
    assert one.nodes == dense20.nodes and one.input_shape == dense20.input_shape
    assert one.layers == dense20.layers and one_image(dense20) is dense20


def test_build_without_csim_through_the_verb(dense20, tmp_path):
    built = PynqZ1().build(dense20, tmp_path / "p", PynqZ1.Options(golden=1, calib=2, bits=12))
    torch.manual_seed(0)
    two = lower(build_model("resnet20").eval(), (2, 3, 32, 32))  # the project runs one image per call
    again = PynqZ1().build(two, tmp_path / "p2", PynqZ1.Options(golden=1, calib=2, bits=12))
    blob = lambda p: (tmp_path / p / "data" / "weights.bin").read_bytes()  # noqa: E731
    assert blob("p2") == blob("p")
    assert again.figures["totals"] == built.figures["totals"]
    assert built.ok and built.problem == "" and built.figures["csim"] is None
    assert built.figures["model"] == "plan" and built.figures["fixed_point"]["bits"] == 12
    assert built.text == text_summary(built.figures) and "layer" not in built.text  # no --report
    assert json.loads((tmp_path / "p" / "report.json").read_text())["model"] == "plan"
    assert (tmp_path / "p" / "data" / "weights.bin").is_file()


def test_a_csim_mismatch_is_the_builds_problem(dense20, tmp_path, monkeypatch):
    """What a C-simulation that differs from the fixed-point reference returns (no compiler needed)."""
    sim = dict(bit_exact=False, mismatches=3, max_abs_err_vs_float=0.5, max_rel_err_vs_float=0.1,
               tolerance=0.01, within_tolerance=False, top1_agreement=0.0, images=1, seconds=0.0)  # fmt: skip
    monkeypatch.setattr(project, "_csim", lambda *a: sim)
    built = PynqZ1().build(dense20, tmp_path / "p", PynqZ1.Options(csim=True, golden=1, calib=1))
    assert not built.ok and built.problem == CSIM_MISMATCH and built.figures["csim"]["mismatches"] == 3
    assert "bit-exact NO" in built.text


@pytest.mark.slow
@CSIM
def test_build_with_csim_is_bit_exact(cepd20, tmp_path, monkeypatch):
    monkeypatch.setenv("CEPD_DEPLOY_CACHE", str(tmp_path / "cache"))
    opts = PynqZ1.Options(csim=True, golden=2, calib=4, seed=3, report=True, label="cepd-resnet20")
    built = get("pynq-z1").build(cepd20, tmp_path / "p", opts)
    c = built.figures["csim"]
    assert built.ok and built.problem == "" and c["bit_exact"] and c["mismatches"] == 0 and c["images"] == 2
    assert c["within_tolerance"]
    assert built.figures["model"] == "cepd-resnet20"
    assert built.text == text_summary(built.figures, report=True) and "bit-exact yes" in built.text
    assert "PE eff" in built.text  # --report: the per-layer table
    fused = {name for t in built.figures["tiling"] if t["steps"] > 1 for name in t["name"].split("+")}
    assert fused >= {b.layer for b in cepd20.blocks()}  # every CEPD layer ran in one group (or a chain)
    assert built.figures["totals"] == PynqZ1().estimate(cepd20).figures["totals"]


def test_the_target_module_imports_nothing_heavy():
    code = (
        "import sys, cepd_deploy.targets.pynq_z1; from cepd_deploy.targets.pynq_z1.target import PynqZ1;"
        "print(sorted(m for m in ('numpy', 'torch', 'jinja2', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the CEPD layers as groups: from Plan.blocks(), never from names ----------------------------
def test_each_cepd_block_is_one_group(cepd20):
    groups = {it.name: it for it in partition(cepd20) if isinstance(it, Group)}
    blocks = cepd20.blocks()
    assert blocks and any(b.subsample for b in blocks)
    for b in blocks:
        g = groups[b.layer]
        chain = [n for n in b.steps if n.role is Role.STEP]
        assert [s.node for s in g.steps] == [*chain[:-1], b.sparse, chain[-1]]
        assert g.steps[-1].scatter is b.scatter and g.steps[-1].scatter_b == b.sparse.output
        assert (g.out, g.residual, g.x, g.src) == (b.output, b.residual, b.branch_input, b.input)
        assert g.subsample is b.subsample
        stride = b.subsample.attrs.stride if b.subsample else (1, 1)
        assert g.load_step == stride  # the loader subsamples; no max-pool step runs


def _opaque(plan: Plan) -> Plan:
    """Every node, value and layer renamed to an opaque name; the layer table dropped."""
    value = {plan.input: "v_in"} | {n.output: f"v{i}" for i, n in enumerate(plan.nodes)}
    layer = {name: f"L{i}" for i, name in enumerate(dict.fromkeys(n.layer for n in plan.nodes))}
    nodes = [
        replace(n, name=f"n{i}", inputs=tuple(value[x] for x in n.inputs), output=value[n.output],
                layer=layer[n.layer])
        for i, n in enumerate(plan.nodes)
    ]  # fmt: skip
    return Plan(value[plan.input], plan.input_shape, value[plan.output], nodes, plan.consts, {})


def test_groups_do_not_depend_on_names(cepd20):
    opaque = _opaque(cepd20)
    verify(opaque)
    a, b = program.compile_program(cepd20, EngineConfig()), program.compile_program(opaque, EngineConfig())
    assert a.records == b.records and len(a.groups) == len(b.groups)
    apart = program.compile_program(opaque, EngineConfig(), chain_groups=False)  # no on-chip chains
    assert sum(g["steps"] > 1 for g in apart.groups) == len(opaque.blocks()) == len(cepd20.blocks())


def test_a_fused_group_that_does_not_fit_runs_node_by_node(cepd20, monkeypatch):
    monkeypatch.setattr(program, "fits", lambda cfg, g: False)
    prog = program.compile_program(cepd20, EngineConfig(), chain_groups=False)
    assert all(g["steps"] == 1 for g in prog.groups)
    assert {m["node"] for m in prog.meta} == {n.name for n in cepd20.nodes}  # the subsamples too
