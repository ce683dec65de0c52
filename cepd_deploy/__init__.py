"""cepd-deploy: run CNNs compressed with CEPD (TT low-rank + filter-sparse) fast on real hardware.

The public names are imported on first use (``cepd_deploy.convert`` loads torch then), so that
``import cepd_deploy`` and the command's ``--help`` stay fast. Importing the package changes no
environment variable; see :mod:`cepd_deploy.process` for the ones the command sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cepd_deploy import lazy
from cepd_deploy.errors import CEPDError

__version__ = "0.1.0"

#: public name -> the module that defines it (imported by :func:`__getattr__` on first use)
_LAZY = {
    "CEPDConv2d": "cepd_deploy.model.layers",
    "Plan": "cepd_deploy.plan.ir",
    "ZOO": "cepd_deploy.model.zoo",
    "build_model": "cepd_deploy.model.zoo",
    "convert": "cepd_deploy.frontend.convert",
    "load": "cepd_deploy.model.format",
    "lower": "cepd_deploy.frontend.lower",
    "save": "cepd_deploy.model.format",
}

if TYPE_CHECKING:
    from cepd_deploy.frontend.convert import convert
    from cepd_deploy.frontend.lower import lower
    from cepd_deploy.model.format import load, save
    from cepd_deploy.model.layers import CEPDConv2d
    from cepd_deploy.model.zoo import ZOO, build_model
    from cepd_deploy.plan.ir import Plan


__getattr__, __dir__ = lazy.attach(__name__, _LAZY)


def get_library_path() -> str:
    """Path of the onnxruntime custom-op library running ``ai.cepd::TTSparseConv`` on the native
    kernel (``so.register_custom_ops_library(cepd_deploy.get_library_path())``); raises
    CEPDError if it was not built. See :mod:`cepd_deploy.targets.onnx.ort_library`."""
    from cepd_deploy.targets.onnx.ort_library import get_library_path as path

    return path()


def export_onnx(model, path, *, input_shape, fused: bool = False):
    """Lower ``model`` (a CEPD or dense torch model) for ``input_shape`` ((N,) C, H, W; N defaults
    to 1) and write it as ONNX (portable, or ``fused`` with one ``ai.cepd::TTSparseConv`` node per
    CEPD conv). See :func:`cepd_deploy.targets.onnx.export`."""
    from cepd_deploy.frontend.load import load_plan
    from cepd_deploy.targets.onnx import export

    shape = tuple(input_shape)
    batch = shape[0] if len(shape) == 4 else 1
    return export(load_plan(model, shape, batch=batch).plan, path, fused=fused)


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
