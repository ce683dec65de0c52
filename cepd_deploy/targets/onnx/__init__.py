"""The onnxruntime target: Plan -> ONNX (portable or fused), sessions, verification.

>>> plan = lower(model, (1, 3, 224, 224))                          # doctest: +SKIP
>>> export(plan, "model.onnx", fused=True)                         # doctest: +SKIP
>>> sess = build_session("model.onnx", threads=2)                  # doctest: +SKIP

``portable``: standard ops only (opset 18). ``fused``: one ``ai.cepd::TTSparseConv`` node per
CEPD layer with a function body of standard ops (stock onnxruntime runs it as is).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Plan
from cepd_deploy.plan.rewrite import merge_pointwise
from cepd_deploy.targets import TargetInfo
from cepd_deploy.targets.onnx.portable import HANDLERS, UNSUPPORTED, to_onnx
from cepd_deploy.targets.onnx.session import build_session, run_session, session_options

TARGET = TargetInfo("onnxruntime", "runtime", HANDLERS, UNSUPPORTED)

__all__ = [
    "TARGET",
    "build_session",
    "check",
    "export",
    "export_onnx",
    "run_session",
    "session_options",
    "to_model",
]


def to_model(plan: Plan, *, fused: bool = False, name: str = "cepd", merge: bool = True) -> onnx.ModelProto:
    """The Plan as an ONNX ModelProto (checked, shapes inferred and stored).

    With ``merge`` (an exact rewrite, :func:`cepd_deploy.plan.rewrite.merge_pointwise`)
    consecutive 1x1 steps of a layer become one matmul where that saves MACs. How each sparse
    branch joins the chain is the emitter's choice (``portable.scatter_forms``), the same in
    both exports: the fused node keeps the cores, S and its index as inputs, its function body
    computes the joint weights from them (constant-folded by onnxruntime at load).
    """
    if merge:
        plan = merge_pointwise(plan)
    if fused:
        from cepd_deploy.targets.onnx.fused import to_onnx_fused

        model = to_onnx_fused(plan, name=name)
    else:
        model = to_onnx(plan, name=name)
    return check(model)


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run the full ONNX checker and strict shape inference; every shape must be static."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise CEPDError(f"exported ONNX model is invalid: {str(exc).splitlines()[0]}") from None
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") for d in dims):
            raise CEPDError(f"exported ONNX model: value {vi.name!r} has no static shape")
    return inferred


def export(plan: Plan, path: str | os.PathLike, fused: bool = False) -> Path:
    """Write the Plan as an ONNX file (atomically: no partial file on failure)."""
    path = Path(path)
    if not path.parent.exists():
        raise CEPDError(f"output folder does not exist: {path.parent}")
    model = to_model(plan, fused=fused, name=path.stem)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_onnx(model, path: str | os.PathLike, *, input_shape: Sequence[int], fused: bool = False) -> Path:
    """Lower a (CEPD or dense) torch model for ``input_shape`` (N, C, H, W) and export it."""
    from cepd_deploy.plan.lower import lower

    shape = tuple(input_shape)
    return export(lower(model, shape if len(shape) == 4 else (1, *shape)), path, fused=fused)
