"""Our declaration of onnxruntime's C API (kernels/ort_abi.h) and the custom-op library built on it.

The table below is the onnxruntime C API's own numbering (the OrtApi function table is
append-only, so an entry's index never changes): the header must put every entry the library
calls at that index. The library is then registered into the installed onnxruntime and runs a
fused TTSparseConv layer against torch.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_onnx_helpers import OneLayer, random_layer, randomise_bn

import cepd_deploy as cd
from cepd_deploy.targets.onnx import ort_library as ol
from cepd_deploy.targets.onnx import run_session, session_options, to_model
from cepd_deploy.targets.onnx.fused import OP_TYPE

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
CXX = shutil.which("g++") or shutil.which("c++")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler on this machine")

#: OrtApi entry -> its index in onnxruntime's C API function table (the API's documented order)
ORT_API_INDEX = {
    "CreateStatus": 0,
    "CreateCustomOpDomain": 26,
    "CustomOpDomain_Add": 27,
    "AddCustomOpDomain": 28,
    "GetTensorMutableData": 51,
    "GetTensorElementType": 60,
    "GetDimensionsCount": 61,
    "GetDimensions": 62,
    "GetTensorTypeAndShape": 65,
    "KernelContext_GetInputCount": 88,
    "KernelContext_GetInput": 90,
    "KernelContext_GetOutput": 91,
    "ReleaseStatus": 93,
    "ReleaseTensorTypeAndShapeInfo": 99,
    "KernelInfoGetAttributeArray_int64": 163,
    "KernelInfo_GetInputCount": 230,
    "KernelInfo_GetNodeName": 244,
    "KernelInfoGetConstantInput_tensor": 249,
}
#: OrtCustomOp's fields in order (API version 21 layout): a uint32 version, then callbacks
ORT_CUSTOM_OP_FIELDS = [
    "version", "CreateKernel", "GetName", "GetExecutionProviderType", "GetInputType", "GetInputTypeCount",
    "GetOutputType", "GetOutputTypeCount", "KernelCompute", "KernelDestroy", "GetInputCharacteristic",
    "GetOutputCharacteristic", "GetInputMemoryType", "GetVariadicInputMinArity",
    "GetVariadicInputHomogeneity", "GetVariadicOutputMinArity", "GetVariadicOutputHomogeneity",
    "CreateKernelV2", "KernelComputeV2",
    "InferOutputShapeFn", "GetStartVersion", "GetEndVersion", "GetMayInplace", "ReleaseMayInplace",
    "GetAliasMap", "ReleaseAliasMap",
]  # fmt: skip
#: documented enum values the library passes to the runtime
ORT_ENUMS = {"ORT_FAIL": 1, "ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED": 0,
             "ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT": 1, "INPUT_OUTPUT_REQUIRED": 0, "INPUT_OUTPUT_VARIADIC": 2,
             "OrtMemTypeDefault": 0}  # fmt: skip


def _layout_check(index: dict[str, int]) -> str:
    """C++ that compiles only if ort_abi.h has the given OrtApi indices and the known layouts."""
    lines = ['#include <cstddef>', '#include "ort_abi.h"', "constexpr size_t P = sizeof(void*);",
             "static_assert(ORT_API_VERSION == 21, \"API version\");",
             "static_assert(offsetof(OrtApiBase, GetApi) == 0, \"GetApi\");",
             "static_assert(offsetof(OrtApiBase, GetVersionString) == P, \"GetVersionString\");"]  # fmt: skip
    lines += [f'static_assert(offsetof(OrtApi, {n}) == {i} * P, "{n}");' for n, i in index.items()]
    lines += [f'static_assert(offsetof(OrtCustomOp, {n}) == {i} * P, "{n}");'
              for i, n in enumerate(ORT_CUSTOM_OP_FIELDS)]  # fmt: skip
    lines.append(f'static_assert(sizeof(OrtCustomOp) == {len(ORT_CUSTOM_OP_FIELDS)} * P, "size");')
    lines += [f'static_assert({n} == {v}, "{n}");' for n, v in ORT_ENUMS.items()]
    return "\n".join(lines) + "\n"


def _syntax_check(source: str, tmp_path: Path) -> subprocess.CompletedProcess:
    src = tmp_path / "check.cpp"
    src.write_text(source)
    return subprocess.run([CXX, "-std=c++17", "-fsyntax-only", f"-I{KERNELS}", str(src)],
                          capture_output=True, text=True)  # fmt: skip


def test_library_calls_only_tabled_entries():
    """Every OrtApi entry ort_customop.cpp calls is in the index table (so the check below covers it)."""
    called = set(re.findall(r"api->(\w+)\(", (KERNELS / "ort_customop.cpp").read_text()))
    assert called == set(ORT_API_INDEX)


@needs_cxx
def test_header_puts_entries_at_their_api_indices(tmp_path):
    done = _syntax_check(_layout_check(ORT_API_INDEX), tmp_path)
    assert done.returncode == 0, done.stderr
    # the check bites: one index off and it does not compile
    wrong = dict(ORT_API_INDEX, KernelInfo_GetNodeName=ORT_API_INDEX["KernelInfo_GetNodeName"] + 1)
    done = _syntax_check(_layout_check(wrong), tmp_path)
    assert done.returncode != 0 and "KernelInfo_GetNodeName" in done.stderr


@needs_cxx
def test_customop_source_needs_no_onnxruntime_header():
    """ort_customop.cpp compiles with kernels/ on the include path: ort_abi.h, no onnxruntime header."""
    cmd = [CXX, "-std=c++17", "-Wall", "-Werror", "-I", str(KERNELS), str(KERNELS / "ort_customop.cpp")]
    done = subprocess.run([*cmd, "-fsyntax-only"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    deps = subprocess.run([*cmd, "-M"], capture_output=True, text=True, check=True).stdout
    assert "ort_abi.h" in deps and "onnxruntime" not in deps


@pytest.fixture(scope="module")
def library() -> ctypes.CDLL:
    if CXX is None and not ol.available():
        pytest.skip("no C++ compiler on this machine: the custom-op library cannot be built")
    path = cd.get_library_path()  # a CEPDError (test failure) if a compiler exists but it was not built
    lib = ctypes.CDLL(path)
    lib.cepd_ort_version.restype = ctypes.c_char_p
    return lib


def test_library_sees_the_installed_onnxruntime(library):
    before = library.cepd_ort_registered()
    so = ort.SessionOptions()
    so.register_custom_ops_library(cd.get_library_path())
    assert library.cepd_ort_registered() == before + 1  # RegisterCustomOps added the ai.cepd domain
    assert library.cepd_ort_version().decode() == ort.__version__  # OrtGetApiBase()->GetVersionString()
    assert library.cepd_ort_api_version() == 21


def test_fused_layer_runs_on_the_library_like_torch(library):
    layer = random_layer(16, 24, (3, 3), kappa=4, padding=1, seed=3)
    model = randomise_bn(OneLayer(layer, True, False, "relu"), seed=2).eval()
    fused = to_model(cd.lower(model, (2, 16, 9, 9)), fused=True)
    nodes = [n for n in fused.graph.node if n.op_type == OP_TYPE]
    assert len(nodes) == 1 and ol.is_native(nodes[0])
    so = session_options(2)
    so.register_custom_ops_library(cd.get_library_path())
    sess = ort.InferenceSession(fused.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((2, 16, 9, 9)).astype(np.float32)
    before = ol.runs()
    y = run_session(sess, x)
    assert ol.runs() == before + 1  # the library's kernel ran the node
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape
    assert float(np.abs(y - ref).max()) <= 1e-4 * float(np.abs(ref).max()) + 1e-7
