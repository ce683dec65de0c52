"""Dense stages: CEPD layers lowered as the dense conv their L + S make, the stage candidates,
the measured choice, and ``export`` / ``bench`` applying it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import cepd_deploy as cd
from cepd_deploy.bench import run_bench
from cepd_deploy.cli import main
from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.dense_stages import dense_stages, stages
from cepd_deploy.plan.cost import totals
from cepd_deploy.plan.ir import Op
from cepd_deploy.targets.onnx import build_session, run_session, to_model
from cepd_deploy.targets.onnx import ort_library as ol
from cepd_deploy.targets.onnx.verify import compare

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return cd.convert(cd.build_model("resnet20"), flops_remaining=0.5).eval()


def _cepd(plan) -> list[str]:
    return [n for n, info in plan.layers.items() if info.kind == "cepd"]


@pytest.mark.parametrize("which", ["resnet20", "awkward"])
def test_dense_layers_compute_the_same_function(which, resnet20, awkward):
    """Every CEPD layer named in ``dense`` becomes one conv with W = L + S (BN folded), the
    others keep their chain; onnxruntime runs both Plans to torch's output."""
    if which == "awkward":
        torch.manual_seed(3)
        shape = (1, 3, 20, 24)
        model = cd.convert(awkward, flops_remaining=0.4, input_shape=shape).eval()
    else:
        model, shape = resnet20, SHAPE
    plan = cd.lower(model, shape)
    names = _cepd(plan)
    assert len(names) >= 3
    dense = names[: len(names) // 2 + 1]
    mixed = cd.lower(model, shape, dense=dense)
    for name in names:
        nodes = [n for n in mixed.nodes if n.layer == name]
        if name in dense:
            assert [n.op for n in nodes] == [Op.CONV] and mixed.layers[name].path == "dense"
            assert mixed.layers[name].ranks == plan.layers[name].ranks  # still the CEPD layer
        else:
            assert len(nodes) > 1 and mixed.layers[name].path != "dense"
    assert totals(mixed)["macs"] > totals(plan)["macs"]
    x = torch.randn(shape)
    with torch.no_grad():
        ref = model(x).numpy()
    for fused in (False, True):
        y = run_session(build_session(to_model(mixed, fused=fused), 1), x.numpy())
        assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    checks = compare(mixed, to_model(mixed, fused=True), model)
    assert all(c.ok for c in checks)


def test_stage_candidates_are_nested_by_map_size(resnet20):
    plan = cd.lower(resnet20, SHAPE)
    cands = stages(plan)
    assert cands[0] == (0, ())
    sizes = [s for s, _ in cands[1:]]
    assert sizes == sorted(set(sizes), reverse=True) == [1024, 256, 64]  # resnet20: 32x32, 16x16, 8x8
    for (_, small), (_, big) in zip(cands, cands[1:]):
        assert set(small) < set(big)
    assert set(cands[-1][1]) == set(_cepd(plan))
    for s, names in cands[1:]:
        for name in names:
            assert np.prod(plan.layers[name].out_shape[2:]) >= s


def test_choice_follows_the_margin(resnet20):
    """The measured times decide; the margin is what a candidate with more dense layers must win by."""
    none = dense_stages(resnet20, SHAPE, "onnxruntime", rounds=3, margin=1.0, progress=False)
    assert none.names == () and len(none.candidates) == 4
    assert all(ms > 0 for _, _, ms in none.candidates)
    every = dense_stages(resnet20, SHAPE, "onnxruntime", rounds=3, margin=-10.0, progress=False)
    assert set(every.names) == set(_cepd(cd.lower(resnet20, SHAPE)))  # each later one "wins"
    chosen = dense_stages(resnet20, SHAPE, "onnxruntime", rounds=3, progress=False)
    assert chosen.names in [names for _, names, _ in chosen.candidates]
    data = chosen.to_json()
    assert data["runtime"] == "onnxruntime" and len(data["candidates"]) == 4
    assert chosen.describe().count("ms") == 4


def test_dense_stages_errors(resnet20):
    with pytest.raises(CEPDError, match="measured on"):
        dense_stages(resnet20, SHAPE, "tvm", progress=False)
    plan_dense = dense_stages(cd.build_model("resnet20"), SHAPE, "onnxruntime", progress=False)
    assert plan_dense.names == () and plan_dense.candidates == ((0, (), 0.0),)  # nothing to choose
    assert plan_dense.describe() == "no CEPD layers: nothing to run dense"


def _json(capsys, *args):
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_export_applies_the_measured_stages(tmp_path, capsys, resnet20):
    path = tmp_path / "r20.pt"
    cd.save(resnet20, path, input_shape=SHAPE)
    out = str(tmp_path / "p.onnx")
    res = _json(capsys, "export", str(path), "--dense-stages", "measure", "--verify", "-o", out)
    stages_ = res["dense_stages"]
    assert res["verify"]["ok"] and stages_["runtime"] == "onnxruntime"
    assert res["totals"]["flops_remaining"] < 0.6  # the model's own figures
    run = stages_["run_totals"]["macs"]
    assert (run > res["totals"]["macs"]) == bool(stages_["dense_layers"])
    none = _json(capsys, "export", str(path), "--dense-stages", "none", "-o", str(tmp_path / "n.onnx"))
    assert "dense_stages" not in none
    plain = _json(capsys, "export", str(path), "-o", str(tmp_path / "q.onnx"))  # portable: auto = none
    assert "dense_stages" not in plain


NO_LIBRARY = "no C++17 compiler or onnxruntime C API header here: the custom-op library was not built"


@pytest.mark.skipif(not ol.available(), reason=NO_LIBRARY)
def test_fused_export_and_bench_measure_on_the_library(tmp_path, capsys, resnet20):
    path = tmp_path / "r20.pt"
    cd.save(resnet20, path, input_shape=SHAPE)
    res = _json(capsys, "export", str(path), "--fused", "-o", str(tmp_path / "f.onnx"))  # auto
    assert res["dense_stages"]["runtime"] == "onnxruntime-native"
    rows = run_bench(str(path), targets=("onnxruntime", "onnxruntime-native"), repeats=1, warmup=0,
                        progress=False)  # fmt: skip
    native = {r.model.rsplit("-", 1)[1]: r for r in rows if r.target == "onnxruntime-native"}
    portable = {r.model.rsplit("-", 1)[1]: r for r in rows if r.target == "onnxruntime"}
    assert "dense_stages" in native["cepd"].details and "dense_stages" not in native["dense"].details
    assert "dense_stages" not in portable["cepd"].details
    assert native["cepd"].flops_remaining == portable["cepd"].flops_remaining < 0.6
    off = run_bench(str(path), targets=("onnxruntime-native",), repeats=1, warmup=0, progress=False,
                       dense_stages=False)  # fmt: skip
    assert all("dense_stages" not in r.details for r in off)
