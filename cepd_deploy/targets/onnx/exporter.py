"""Plan -> ONNX model: the emitters (portable or fused), the checker, atomic writing.

:func:`to_model` emits a Plan exactly as it is given; :func:`cepd_deploy.targets.onnx.export`
writes what every deployment runs (the Plan after the targets' passes).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from cepd_deploy.errors import CEPDError
from cepd_deploy.files import atomic_write
from cepd_deploy.plan.ir import Plan


def to_model(plan: Plan, *, fused: bool = False, name: str = "cepd") -> onnx.ModelProto:
    """The Plan as an ONNX ModelProto (checked, shapes inferred and stored); no passes.

    How each sparse branch joins the chain is the emitter's choice (``portable.scatter_forms``),
    the same in both exports: the fused node keeps the cores, S and its index as inputs, its
    function body computes the joint weights from them (constant-folded by onnxruntime at load).
    """
    if fused:
        from cepd_deploy.targets.onnx.fused import to_onnx_fused

        model = to_onnx_fused(plan, name=name)
    else:
        from cepd_deploy.targets.onnx.portable import to_onnx

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


def save(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` atomically (no partial file on failure)."""
    path = Path(path)
    if not path.parent.exists():
        raise CEPDError(f"output folder does not exist: {path.parent}")
    return atomic_write(path, lambda f: onnx.save(model, f))
