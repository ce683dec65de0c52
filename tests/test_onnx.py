"""The onnxruntime target: handler table, portable and fused exports of zoo models, CLI, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import cepd_deploy as cd
from cepd_deploy.cli import main
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.cost import totals
from cepd_deploy.plan.ir import Op
from cepd_deploy.plan.passes import merge_pointwise
from cepd_deploy.plan.reference import run as run_plan
from cepd_deploy.targets import get
from cepd_deploy.targets.onnx import build_session, export, prepare, run_session, to_model
from cepd_deploy.targets.onnx.fused import DOMAIN, OP_TYPE
from cepd_deploy.targets.onnx.portable import (
    HANDLERS,
    UNSUPPORTED,
    scatter_forms,
)
from cepd_deploy.targets.onnx.verify import compare


def test_every_op_has_a_handler_or_is_unsupported():
    for op in Op:
        assert (op in HANDLERS) != (op in UNSUPPORTED), op
    for name in ("onnxruntime", "onnxruntime-fused", "onnxruntime-native"):
        target = get(name)
        assert target.name == name and target.kind.value == "runtime"
        assert target.ops == frozenset(HANDLERS) and target.passes == ("merge_pointwise",)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = cd.convert(cd.build_model("resnet20"), flops_remaining=0.5).eval()
    return model, cd.lower(model, (1, 3, 32, 32))


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(1)
    model = cd.convert(cd.build_model("mobilenetv2_cifar"), flops_remaining=0.6).eval()
    return model, cd.lower(model, (1, 3, 32, 32))


def _standard_only(model: onnx.ModelProto) -> bool:
    return all(n.domain in ("", "ai.onnx") for n in model.graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("which", ["resnet20", "mobilenet"])
def test_zoo_models_match_torch_and_plan(which, fused, request):
    model, plan = request.getfixturevalue(which)
    onnx_model = to_model(prepare(plan), fused=fused)
    checks = compare(plan, onnx_model, model, samples=1)
    assert {c.against for c in checks} == {"plan", "torch"}
    assert len(checks) > 10  # every layer output, not just the last
    assert all(c.ok for c in checks), [c for c in checks if not c.ok][:3]
    cepd_layers = len(plan.blocks())  # every CEPD layer lowered to its TT chain (none to a dense conv)
    assert cepd_layers == sum(info.kind == "cepd" for info in plan.layers.values())
    fused_nodes = [n for n in onnx_model.graph.node if n.op_type == OP_TYPE]
    if fused:
        assert len(fused_nodes) == cepd_layers > 0
        assert all(n.domain == DOMAIN for n in fused_nodes)
        assert len(onnx_model.functions) == cepd_layers
        assert {f.overload for f in onnx_model.functions} == {n.overload for n in fused_nodes}
    else:
        assert not fused_nodes and _standard_only(onnx_model)


def test_portable_graph_structure(resnet20):
    _, plan = resnet20
    m = to_model(prepare(plan))
    ops = [n.op_type for n in m.graph.node]
    assert m.opset_import[0].version >= 17
    # BN folded; each scatter-add is placed by MACs (joint / fold / place) or is a ScatterND
    assert "BatchNormalization" not in ops and "Identity" not in ops and "ScatterElements" not in ops
    merged = merge_pointwise(plan)
    scatters = [n for n in merged.nodes if n.op is Op.SCATTER_ADD]
    forms = [f.form for f in scatter_forms(merged).values()]
    assert len(forms) == len(scatters) == sum(i.kind == "cepd" and i.kappa > 0 for i in plan.layers.values())
    assert ops.count("Concat") == forms.count("fold") > 0
    assert ops.count("ScatterND") == forms.count("nd")
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in m.graph.value_info}
    assert all(all(d > 0 for d in s) for s in shapes.values()) and len(shapes) > 20


def test_merge_keeps_the_values(resnet20):
    _, plan = resnet20
    merged = merge_pointwise(plan)
    assert len(merged.nodes) < len(plan.nodes)
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = run_plan(plan, x).numpy()
    assert np.abs(run_plan(merged, x).numpy() - ref).max() <= 1e-4 * np.abs(ref).max()


def test_export_writes_atomically_and_runs(tmp_path, resnet20):
    model, plan = resnet20
    out = export(plan, tmp_path / "r20.onnx", fused=True)
    assert out.exists() and not list(tmp_path.glob(".*tmp"))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = run_session(build_session(out, threads=1), x)
    ref = run_plan(plan, x).numpy()
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    with pytest.raises(CEPDError, match="folder"):
        export(plan, tmp_path / "missing" / "x.onnx")


def test_export_onnx_dense_model_and_batch(tmp_path):
    torch.manual_seed(0)
    dense = cd.build_model("resnet20").eval()
    out = cd.export_onnx(dense, tmp_path / "d.onnx", input_shape=(2, 3, 32, 32))  # the top-level API
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = run_session(build_session(out), x)
    ref = dense(torch.from_numpy(x)).detach().numpy()
    assert y.shape == (2, 10) and np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_unsupported_layer_is_a_one_line_error(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PixelShuffle(2))
    with pytest.raises(CEPDError) as exc:
        cd.export_onnx(model, tmp_path / "u.onnx", input_shape=(1, 3, 8, 8))
    assert "\n" not in str(exc.value) and "PixelShuffle" in str(exc.value)
    assert not (tmp_path / "u.onnx").exists()


def test_cli_export_verify_json(tmp_path, capsys, resnet20):
    model, _ = resnet20
    path = tmp_path / "r20.pt"
    cd.save(model, path, input_shape=(1, 3, 32, 32))
    out = tmp_path / "r20.onnx"
    args = ["export", str(path), "--format", "onnx", "--fused", "--verify", "-o", str(out), "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verify"]["ok"] and data["fused"] and out.exists()
    assert any(c["against"] == "torch" for c in data["checks"])
    assert 0.4 < data["totals"]["flops_remaining"] < 0.6


def test_cli_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    assert main(["export", str(bad), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cepd-deploy: error:") and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()
    assert main(["export", "resnet20", "-o", str(tmp_path / "x.txt")]) == 2


@pytest.mark.slow
def test_convert_rank_multiple():
    torch.manual_seed(0)
    model = cd.convert(cd.build_model("resnet20"), flops_remaining=0.5, rank_multiple=8)
    layers = [m for m in model.modules() if isinstance(m, cd.CEPDConv2d)]
    assert layers
    for m in layers:
        assert all(r % 8 == 0 or r == top for r, top in zip(m.spec.ranks, m.layout.max_ranks)), m.spec
    flops = totals(cd.lower(model, (1, 3, 32, 32)))["flops_remaining"]
    assert abs(flops - 0.5) <= 0.01
