"""Dense stages: CEPD layers lowered as the dense conv their L + S make, the stage candidates,
the measured choice, and ``export`` / ``bench`` applying it."""

from __future__ import annotations

import json

import numpy as np
import onnx
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


@pytest.mark.skipif(not ol.available(), reason=NO_LIBRARY)
def test_layers_marked_standard_run_on_onnxruntime_with_the_same_result():
    """``mark_standard``: the marked CEPD layers run their function bodies, the marked dense 1x1
    convs stay onnxruntime's, the others stay on the kernel; the output does not change."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 24, 3, padding=1), bn(24), torch.nn.ReLU(),
                              torch.nn.Conv2d(24, 32, 1), bn(32), torch.nn.ReLU(),  # stays dense
                              torch.nn.Conv2d(32, 32, 3, padding=1), bn(32), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 16, 1), torch.nn.ReLU()).eval()  # fmt: skip
    for m in net.modules():
        if isinstance(m, bn):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    layers = {"2": {"ranks": [8, 8]}, "8": {"ranks": [8, 8]}, "11": {"ranks": [4, 4]}}
    model = cd.convert(net, config={"layers": layers}, input_shape=SHAPE).eval()
    plan = cd.lower(model, SHAPE)
    fused = to_model(plan, fused=True)
    native = ol.native_model(fused)
    cepd = {n.overload for n in native.graph.node if ol.is_native(n) and n.overload}
    moved = {n.name.split("/", 1)[0] for n in native.graph.node if ol.is_native(n) and not n.overload}
    assert len(cepd) == 3 and moved == {"5"}  # the dense 1x1 conv moves onto the kernel
    marked = sorted(cepd)[:2] + ["5"]
    mixed = ol.native_model(ol.mark_standard(to_model(plan, fused=True), marked))
    assert ol.standard_layers(mixed) == frozenset(marked)
    on_kernel = {n.overload or n.name.split("/", 1)[0] for n in mixed.graph.node if ol.is_native(n)}
    assert on_kernel == (cepd | moved) - set(marked)
    assert sum(n.op_type == ol.REF_OP for n in mixed.graph.node) == 2
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for chosen in ((), marked):
        sess = build_session(ol.mark_standard(to_model(plan, fused=True), chosen), 1, native="library")
        assert np.abs(run_session(sess, x) - ref).max() <= 1e-4 * np.abs(ref).max()
        assert len(sess.cepd_native_layers) == len(cepd | moved) - len(chosen)
    bad = ol.mark_standard(to_model(plan, fused=True), ["x"])
    bad.metadata_props[0].value = "{not json"
    with pytest.raises(CEPDError, match="not a JSON list of layer names"):
        ol.native_model(bad)


@pytest.mark.skipif(not ol.available(), reason=NO_LIBRARY)
def test_standard_layers_follow_the_margins(resnet20, monkeypatch):
    from cepd_deploy.frontend import dense_stages as ds

    plan = cd.lower(resnet20, SHAPE)
    monkeypatch.setattr(ds, "LAYER_MARGIN", 1.0)  # onnxruntime never 100% faster: the kernel keeps all
    names, (a, b) = ds.standard_layers(plan, threads=1, rounds=3, progress=False)
    assert names == () and a == b > 0
    monkeypatch.setattr(ds, "LAYER_MARGIN", -10.0)  # every layer "faster" on onnxruntime
    names, (a, b) = ds.standard_layers(plan, threads=1, rounds=3, margin=-10.0, progress=False)
    native = ol.native_model(to_model(plan, fused=True))
    assert set(names) == {n.overload or n.name.split("/", 1)[0] for n in native.graph.node if ol.is_native(n)}
    assert a > 0 and b > 0
    names, _ = ds.standard_layers(plan, threads=1, rounds=3, margin=10.0, progress=False)
    assert names == ()  # the mix must be 10x faster whole: kept on the kernel
    chosen = ds.dense_stages(resnet20, SHAPE, "onnxruntime-native", threads=1, rounds=3, progress=False)
    assert chosen.standard_ms is not None and "standard_layers" in chosen.to_json()
    assert "left to onnxruntime" in chosen.describe()


@pytest.mark.skipif(not ol.available(), reason=NO_LIBRARY)
def test_the_native_target_and_bench_apply_standard_layers(tmp_path, resnet20, monkeypatch):
    from cepd_deploy import targets
    from cepd_deploy.bench.adapters import runner
    from cepd_deploy.frontend import dense_stages as ds

    plan = cd.lower(resnet20, SHAPE)
    target = targets.get("onnxruntime-native")
    layer = sorted(_cepd(plan))[0]
    assert target.options({"standard_layers": (layer,)}).standard_layers == (layer,)
    run = runner("onnxruntime-native", plan, 1, tmp_path, {"standard_layers": (layer,)})
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        ref = resnet20(torch.from_numpy(x)).numpy()
    assert np.abs(run(x) - ref).max() <= 1e-4 * np.abs(ref).max()
    written = [p for p in tmp_path.rglob("*.onnx")]
    assert written and all(ol.standard_layers(onnx.load(str(p))) == {layer} for p in written)
    path = tmp_path / "r20.pt"
    cd.save(resnet20, path, input_shape=SHAPE)
    assert main(["build", str(path), "--target", "onnxruntime-native", "-o", str(tmp_path / "b"),
                 "--standard-layers", f" {layer}, "]) == 0  # fmt: skip
    built = list((tmp_path / "b").rglob("*.onnx"))
    assert built and all(ol.standard_layers(onnx.load(str(p))) == {layer} for p in built)
    monkeypatch.setattr(ds, "standard_layers", lambda *a, **k: ((layer,), (2.0, 1.0)))
    rows = run_bench(str(path), targets=("onnxruntime-native",), repeats=1, warmup=0, progress=False)
    cepd = next(r for r in rows if r.model.endswith("-cepd"))
    assert cepd.details["dense_stages"]["standard_layers"] == [layer]
