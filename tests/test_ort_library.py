"""The onnxruntime custom-op library (cepd_deploy._ort_cepd): fused models run the native kernel."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_onnx_helpers import OneLayer, random_layer, randomise_bn

import cepd_deploy as cd
from cepd_deploy.targets.onnx import build_session, run_session, session_options, to_model
from cepd_deploy.targets.onnx import ort_library as ol
from cepd_deploy.targets.onnx.fused import OP_TYPE

if not ol.available():
    pytest.skip("the custom-op library was not built (no C++17 compiler or no onnxruntime C API header; "
                "see setup.py)", allow_module_level=True)  # fmt: skip


def _close(y: np.ndarray, ref: np.ndarray) -> bool:
    return y.shape == ref.shape and float(np.abs(y - ref).max()) <= 1e-4 * float(np.abs(ref).max()) + 1e-7


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return cd.convert(cd.build_model("resnet20"), flops_remaining=0.5).eval()


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_resnet20_runs_on_the_library(resnet20, batch, tmp_path):
    plan = cd.lower(resnet20, (batch, 3, 32, 32))
    fused = to_model(plan, fused=True)
    nodes = [n for n in fused.graph.node if n.op_type == OP_TYPE]
    assert nodes and all(ol.is_native(n) for n in nodes)  # every resnet20 layer is supported
    so = session_options(2)
    so.register_custom_ops_library(cd.get_library_path())  # the plain onnxruntime way
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(fused.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    before = ol.runs()
    y = run_session(sess, x)
    assert ol.runs() - before == len(nodes)
    with torch.no_grad():
        ref = resnet20(torch.from_numpy(x)).numpy()
    assert _close(y, ref)
    events = json.loads(open(sess.end_profiling()).read())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
               and e.get("args", {}).get("op_name") == OP_TYPE]  # fmt: skip
    assert len(kernels) == len(nodes)  # the nodes ran as kernels, not as inlined function bodies
    assert not any(e.get("args", {}).get("op_name") in ("ScatterND", "OneHot") for e in events)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("kappa", "residual", "act"),
                         [(0, True, "relu"), (5, True, None), (0, False, "relu6")])  # fmt: skip
def test_single_layers(kappa, residual, act, threads):
    layer = random_layer(16, 16, (3, 3), kappa=kappa, padding=1, seed=kappa)
    model = randomise_bn(OneLayer(layer, True, residual, act), seed=1).eval()
    plan = cd.lower(model, (2, 16, 10, 10))
    fused = to_model(plan, fused=True)
    st = json.loads(next(a.s for n in fused.graph.node for a in n.attribute if a.name == "structure"))
    assert st["residual"] == residual and st["kappa"] == kappa
    sess = build_session(fused, threads, native=True)
    assert sess.cepd_native == "library" and len(sess.cepd_native_layers) == 1
    x = np.random.default_rng(0).standard_normal((2, 16, 10, 10)).astype(np.float32)
    before = ol.runs()
    for _ in range(2):  # the packed kernel is reused
        y = run_session(sess, x)
        with torch.no_grad():
            assert _close(y, model(torch.from_numpy(x)).numpy())
    assert ol.runs() - before == 2


def test_unsupported_layout_runs_its_function_body():
    layer = random_layer(8, 12, (3, 3), kappa=2, layout="oo-k-ii", padding=1)
    model = OneLayer(layer, False, False, None).eval()
    fused = to_model(cd.lower(model, (1, 8, 6, 6)), fused=True)
    (node,) = [n for n in fused.graph.node if n.op_type == OP_TYPE]
    assert not ol.is_native(node)
    so = session_options(1)
    so.register_custom_ops_library(cd.get_library_path())
    # the bare recipe: the library runs the layer by its reference path (ref_desc)
    bare = ort.InferenceSession(fused.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    before = ol.runs()
    with torch.no_grad():
        assert _close(run_session(bare, x), model(torch.from_numpy(x)).numpy())
    assert ol.runs() == before + 1
    rewritten = ol.native_model(fused)
    assert [n.op_type for n in rewritten.graph.node if n.domain == node.domain] == [ol.REF_OP]
    sess = build_session(fused, 1, native=True)  # native_model: onnxruntime runs the function body
    assert sess.cepd_native == "library" and sess.cepd_native_layers == []
    before = ol.runs()
    y = run_session(sess, x)
    assert ol.runs() == before
    with torch.no_grad():
        assert _close(y, model(torch.from_numpy(x)).numpy())


def test_native_model_keeps_supported_models():
    layer = random_layer(16, 16, (3, 3), kappa=3, padding=1)  # (an 8 -> 8 1x1 lowers to a dense conv)
    fused = to_model(cd.lower(OneLayer(layer, False, False, None).eval(), (1, 16, 6, 6)), fused=True)
    assert [ol.is_native(n) for n in fused.graph.node if n.op_type == OP_TYPE] == [True]
    assert ol.native_model(fused) is fused


class _AfterNative(torch.nn.Module):
    """A native CEPD layer ``a``, then dense convs that read its output: ``b`` (1x1, BN, the
    block's residual, ReLU), ``c`` (strided 1x1, ReLU); and two that read ``b``'s output and stay
    on onnxruntime: ``d`` (3x3) and ``e`` (1x1: only convs that read a TTSparseConv node move)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.a = random_layer(8, 16, (3, 3), kappa=2, padding=1)
        self.b, self.bn = nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.c = nn.Conv2d(16, 12, 1, stride=2)
        self.d, self.e = nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.Conv2d(8, 12, 1, stride=2)

    def forward(self, x):
        h = self.a(x)
        y = torch.relu(self.bn(self.b(h)) + x)
        return self.d(y) + torch.relu(self.c(h)) + self.e(y)


def test_dense_1x1_convs_after_native_layers_move_to_the_library():
    model = randomise_bn(_AfterNative(), seed=2)
    fused = to_model(cd.lower(model, (2, 8, 9, 9)), fused=True)
    rewritten = ol.native_model(fused)
    natives = [n for n in rewritten.graph.node if ol.is_native(n)]
    assert len(natives) == 3  # a, b (+ Add + Relu), c (+ Relu)
    convs = [n.input[1] for n in rewritten.graph.node if n.op_type == "Conv" and n.domain == ""]
    assert sorted(w.split(".")[0] for w in convs) == ["d", "e"]
    residual = {n.input[1].split(".")[0]: next(a.i for a in n.attribute if a.name == "residual")
                for n in natives[1:]}  # fmt: skip
    assert residual == {"b": 1, "c": 0}  # b carries the block's residual, c does not
    assert ol.native_model(fused, dense=False) is fused
    sess = build_session(fused, 2, native=True)
    assert len(sess.cepd_native_layers) == 3
    x = np.random.default_rng(0).standard_normal((2, 8, 9, 9)).astype(np.float32)
    before = ol.runs()
    y = run_session(sess, x)
    assert ol.runs() - before == 3
    with torch.no_grad():
        assert _close(y, model(torch.from_numpy(x)).numpy())


class _BesideNative(torch.nn.Module):
    """Dense 1x1 convs that read what a native CEPD layer ``a`` reads: ``p`` (+ ReLU), whose output
    only a native layer ``q`` reads, moves; ``s``, whose output a dense 3x3 ``t`` reads, stays."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.a = random_layer(8, 16, (3, 3), kappa=2, padding=1)
        self.p, self.q = nn.Conv2d(8, 12, 1), random_layer(12, 16, (3, 3), kappa=3, padding=1)
        self.s, self.t = nn.Conv2d(8, 12, 1), nn.Conv2d(12, 16, 3, padding=1)

    def forward(self, x):
        return self.a(x) + self.q(torch.relu(self.p(x))) + self.t(self.s(x))


def test_dense_1x1_convs_beside_native_layers_move_when_only_native_layers_read_them():
    torch.manual_seed(3)
    model = _BesideNative().eval()
    fused = to_model(cd.lower(model, (2, 8, 9, 9)), fused=True)
    rewritten = ol.native_model(fused)
    natives = [n for n in rewritten.graph.node if ol.is_native(n)]
    assert len(natives) == 3  # a, q, p (+ Relu)
    convs = [n.input[1] for n in rewritten.graph.node if n.op_type == "Conv" and n.domain == ""]
    assert sorted(w.split(".")[0] for w in convs) == ["s", "t"]
    x = np.random.default_rng(4).standard_normal((2, 8, 9, 9)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = build_session(fused, 2, native=True)
    assert len(sess.cepd_native_layers) == 3
    assert _close(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime_extensions") is None,
                    reason="onnxruntime-extensions is not installed")  # fmt: skip
def test_extensions_path_still_selectable(resnet20):
    plan = cd.lower(resnet20, (1, 3, 32, 32))
    sess = build_session(to_model(plan, fused=True), 2, native="extensions")
    assert sess.cepd_native == "extensions" and sess.cepd_native_layers
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        assert _close(run_session(sess, x), resnet20(torch.from_numpy(x)).numpy())


def test_bad_native_choice():
    with pytest.raises(cd.CEPDError, match="native must be"):
        build_session(onnx_model_stub(), native="gpu")


def onnx_model_stub():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    return helper.make_model(g)
