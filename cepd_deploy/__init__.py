"""cepd-deploy: run CNNs compressed with CEPD (TT low-rank + filter-sparse) fast on real hardware."""

import os

# torch's OpenMP threads spin while idle by default; next to onnxruntime's threads in one process
# that made eager torch up to 20x slower here. Set before torch loads; the user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cepd_deploy.errors import CEPDError
from cepd_deploy.model.convert import convert
from cepd_deploy.model.format import load, save
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.model.zoo import ZOO, build_model
from cepd_deploy.plan.ir import Plan
from cepd_deploy.plan.lower import lower

__version__ = "0.1.0"


def get_library_path() -> str:
    """Path of the onnxruntime custom-op library running ``ai.cepd::TTSparseConv`` on the native
    kernel (``so.register_custom_ops_library(cepd_deploy.get_library_path())``); raises
    CEPDError if it was not built. See :mod:`cepd_deploy.targets.onnx.ort_library`."""
    from cepd_deploy.targets.onnx.ort_library import get_library_path as path

    return path()


def export_onnx(model, path, *, input_shape, fused: bool = False):
    """Lower ``model`` for ``input_shape`` and write it as ONNX (portable, or ``fused`` with one
    ``ai.cepd::TTSparseConv`` node per CEPD conv). See :func:`cepd_deploy.targets.onnx.export_onnx`."""
    from cepd_deploy.targets.onnx import export_onnx as export

    return export(model, path, input_shape=input_shape, fused=fused)


__all__ = [
    "CEPDConv2d",
    "CEPDError",
    "Plan",
    "ZOO",
    "__version__",
    "build_model",
    "convert",
    "export_onnx",
    "get_library_path",
    "load",
    "lower",
    "save",
]
