"""Run fused models' TTSparseConv nodes on the native kernel inside onnxruntime.

The fallback route, for installs where the custom-op library (``cepd_deploy._ort_cepd``, see
:mod:`cepd_deploy.targets.onnx.ort_library`) was not built because onnxruntime's C headers
could not be had: the kernel is reached through onnxruntime-extensions' Python custom ops.
:func:`native_model` rewrites each
``ai.cepd::TTSparseConv`` node the kernel supports into an ``ai.onnx.contrib`` op that holds only
the activations (input, residual) and a key to a :class:`NativeLayer` built once from the node's
initializers (so weights are not copied per call); unsupported nodes keep their function body.

onnxruntime-extensions' default Python-op callback returns outputs as Python lists (about 160 ns
per element); :func:`_invoke` returns numpy arrays instead (one memcpy), for every Python op.
"""

from __future__ import annotations

import json
import weakref

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cepd_deploy.errors import CEPDError
from cepd_deploy.native.kernel import NativeLayer
from cepd_deploy.native.layer import KernelLayer
from cepd_deploy.targets.onnx.fused import DOMAIN, OP_TYPE

CONTRIB = "ai.onnx.contrib"
OPS = {False: "CepdTTSparseConv", True: "CepdTTSparseConvResidual"}
_LAYERS: weakref.WeakValueDictionary[str, NativeLayer] = weakref.WeakValueDictionary()
_registered = False


def _invoke(k_id, feed, attributes):
    from onnxruntime_extensions._ocos import Opdef

    op = Opdef._odlist[k_id]
    rv = op.body(*feed, **op.cast_attributes(attributes))
    res = []
    for r in rv if isinstance(rv, tuple) else (rv,):
        r = np.asarray(r)
        res += [r.shape, np.ascontiguousarray(r) if r.dtype.kind in "biufc" else r.flatten().tolist()]
    return (k_id, *res)


def library_path() -> str:
    """The custom-op library to register in SessionOptions (onnxruntime-extensions'), with the
    TTSparseConv Python ops added to it."""
    global _registered
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ModuleNotFoundError:
        raise CEPDError("native TTSparseConv in onnxruntime needs onnxruntime-extensions "
                        "(pip install onnxruntime-extensions)") from None  # fmt: skip
    if not _registered:
        for residual, name in OPS.items():
            inputs = [PyCustomOpDef.dt_float] * (2 if residual else 1)
            onnx_op(op_type=name, inputs=inputs, attrs={"key": PyCustomOpDef.dt_string})(_body)
        PyCustomOpDef.install_hooker(_invoke)
        _registered = True
    return get_library_path()


def _body(x, residual=None, key=""):
    # onnxruntime-extensions copies the result into onnxruntime's output at once
    return _LAYERS[key].run_reused(x, residual)


def native_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[NativeLayer]]:
    """A copy of ``model`` whose supported TTSparseConv nodes call the native kernel, and the
    kernel layers it refers to (keep them alive as long as the session)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    layers: list[NativeLayer] = []
    nodes = []
    for node in g.node:
        if node.domain != DOMAIN or node.op_type != OP_TYPE:
            nodes.append(node)
            continue
        structure = next(a for a in node.attribute if a.name == "structure")
        spec = KernelLayer.from_json(json.loads(helper.get_attribute_value(structure)))
        if spec.unsupported() is not None:
            nodes.append(node)
            continue
        ins = list(node.input)
        k = 1 + len(spec.steps) + (1 if spec.kappa else 0)
        weights = [numpy_helper.to_array(inits[n]) for n in ins[1:k]]
        index = None
        if spec.kappa:
            index, k = numpy_helper.to_array(inits[ins[k]]), k + 1
        for flag in (spec.scale, spec.bias):
            if flag:
                weights.append(numpy_helper.to_array(inits[ins[k]]))
                k += 1
        layer = NativeLayer(spec, weights, index)
        key = f"{id(layer):x}"
        _LAYERS[key] = layer
        layers.append(layer)
        data = [ins[0]] + ([ins[-1]] if spec.residual else [])
        nodes.append(helper.make_node(OPS[spec.residual], data, list(node.output), name=node.name,
                                      domain=CONTRIB, key=key))  # fmt: skip
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    overloads = {n.overload for n in g.node if n.domain == DOMAIN}
    kept_f = [f for f in out.functions if f.overload in overloads]
    del out.functions[:]
    out.functions.extend(kept_f)
    out.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    return out, layers
