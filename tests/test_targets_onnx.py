"""The onnxruntime Targets (portable, fused, native) through their public verbs on a CEPD ResNet-20:
runners and builds against the Plan's reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cepd_deploy as cd
from cepd_deploy import targets
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.reference import run as run_plan
from cepd_deploy.targets.base import Kind
from cepd_deploy.targets.onnx import ort_library
from cepd_deploy.targets.onnx.target import Fused, Native, Portable

NAMES = {"onnxruntime": Portable, "onnxruntime-fused": Fused, "onnxruntime-native": Native}
SHAPE = (2, 3, 32, 32)  # a batch of two: a runner takes the Plan's whole batch


def _close(y: np.ndarray, ref: np.ndarray) -> bool:
    return y.shape == ref.shape and float(np.abs(y - ref).max()) <= 1e-4 * float(np.abs(ref).max())


@pytest.fixture(scope="module")
def plan():
    torch.manual_seed(0)
    model = cd.convert(cd.build_model("resnet20"), flops_remaining=0.5).eval()
    plan = cd.lower(model, SHAPE)
    cepd = [name for name, info in plan.layers.items() if info.kind == "cepd"]
    assert [b.layer for b in plan.blocks()] == cepd and len(cepd) > 10  # every one a TT chain (a block)
    return plan


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)


def test_the_registry_has_the_three_targets():
    for name, cls in NAMES.items():
        t = targets.get(name)
        assert type(t) is cls and t.name == name and t.kind is Kind.RUNTIME
        assert set(t.verbs()) == {"build", "runner"} and t.passes == ("merge_pointwise",)
    assert (Portable.fused, Fused.fused, Native.fused) == (False, True, True)
    assert (Portable.native, Fused.native, Native.native) == (False, False, True)


@pytest.mark.parametrize("name", NAMES)
def test_runner_matches_the_reference(plan, x, name, tmp_path):
    target = targets.get(name)
    before = ort_library.runs() if ort_library.available() else 0
    run = target.runner(plan, threads=1, workdir=tmp_path / "work")
    y = run(x)
    assert _close(y, run_plan(plan, x).numpy())
    assert len(list((tmp_path / "work").glob(f"{name}-*/m.onnx"))) == 1  # exported under workdir
    if target.native and ort_library.available():  # every CEPD layer ran on the kernel, once
        assert ort_library.runs() - before == len(plan.blocks())
    assert _close(run(x[::-1].copy()), run_plan(plan, x[::-1].copy()).numpy())  # the session is reused


@pytest.mark.parametrize("name", NAMES)
def test_build_writes_a_verified_model(plan, x, name, tmp_path):
    from cepd_deploy.targets.onnx import build_session, run_session

    target = targets.get(name)
    built = target.build(plan, tmp_path / "out")
    path = tmp_path / "out" / "model.onnx"
    assert built.ok and not built.problem and path.is_file() and built.figures["output"] == str(path)
    f = built.figures
    assert f["verify"]["ok"] and 0 <= f["verify"]["max_rel_err"]["plan"] <= 1e-4
    assert f["verify"]["outputs_checked"] > 10  # every layer output, not just the last
    blocks = len(plan.blocks())
    assert f["fused_nodes"] == (blocks if target.fused else 0)
    assert f["native_nodes"] == (blocks if target.fused else 0)  # resnet20's layers all run natively
    assert str(path) in built.text and "OK" in built.text
    sess = build_session(path, threads=1, native=target.native)  # the file runs as it was checked
    assert _close(run_session(sess, x), run_plan(plan, x).numpy())


def test_build_writes_nothing_that_failed_verification(plan, tmp_path, monkeypatch):
    from cepd_deploy.targets.onnx import verify

    monkeypatch.setattr(verify, "RTOL", 0.0)  # no float result passes
    built = Fused().build(plan, tmp_path / "out")
    assert not built.ok and "reference interpreter" in built.problem and "\n" not in built.problem
    assert not (tmp_path / "out" / "model.onnx").exists() and built.figures["output"] is None


def test_export_applies_the_passes_once(plan, tmp_path):
    from cepd_deploy.plan.passes import merge_pointwise
    from cepd_deploy.targets.onnx import export, prepare, to_model

    prepared = prepare(plan)
    assert len(prepared.nodes) < len(plan.nodes)  # consecutive 1x1 steps merged
    assert [n.name for n in prepared.nodes] == [n.name for n in merge_pointwise(plan).nodes]
    path = export(plan, tmp_path / "m.onnx", fused=True)
    assert path.read_bytes() == to_model(prepared, fused=True, name="m").SerializeToString()
    with pytest.raises(CEPDError, match="folder"):
        export(plan, tmp_path / "missing" / "m.onnx")
