"""The native TTSparseConv kernel as an onnxruntime custom-op library (``cepd_deploy._ort_cepd``).

Built by ``pip install`` from ``kernels/ort_customop.cpp`` and the kernel sources (see setup.py
for where the onnxruntime C API header comes from). Registered in a session, it runs every
``ai.cepd::TTSparseConv`` node of a fused model in C++, with the weights packed once when the
session is created::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(cepd_deploy.get_library_path())
    sess = onnxruntime.InferenceSession(native_model(fused), so)

The fused exporter gives each layer the kernel supports a ``native_desc`` attribute; the library
rejects nodes without one, so :func:`native_model` renames those (op :data:`REF_OP`, same function
body) and onnxruntime runs them as standard ops. A model whose layers are all supported can be
loaded as it is. The kernel's thread pool is its own, per process: :func:`set_threads`
(:func:`~cepd_deploy.targets.onnx.session.build_session` does it from ``threads``).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import onnx

from cepd_deploy.targets.onnx.fused import DOMAIN, OP_TYPE
from cepd_deploy.targets.onnx.native import extension_path, loads

REF_OP = "TTSparseConvRef"  # unsupported layers: the function body, not claimed by the library
DESC_ATTR = "native_desc"


@lru_cache(maxsize=1)
def get_library_path() -> str:
    """Path of the custom-op library, for ``SessionOptions.register_custom_ops_library``."""
    return extension_path("_ort_cepd", "the onnxruntime custom-op library (cepd_deploy._ort_cepd; needs a "
                          "C++17 compiler and onnxruntime's C API header at install)")  # fmt: skip


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    # the same file onnxruntime loads: the dynamic loader hands back the same instance
    lib = ctypes.CDLL(get_library_path())
    lib.cepd_tts_set_threads.argtypes = [ctypes.c_int]
    lib.cepd_ort_runs.restype = ctypes.c_int64
    return lib


def available() -> bool:
    """Whether the library is built and loads."""
    return loads(_lib)


def set_threads(n: int) -> None:
    """Threads of the library's kernel pool (default: min(2, cores)); applies to all sessions."""
    _lib().cepd_tts_set_threads(int(n))


def runs() -> int:
    """TTSparseConv kernel calls made by the library in this process (a counter, for checks)."""
    return int(_lib().cepd_ort_runs())


def is_native(node: onnx.NodeProto) -> bool:
    """Whether the library runs this node (a TTSparseConv node with a ``native_desc``)."""
    fused = node.domain == DOMAIN and node.op_type == OP_TYPE
    return fused and any(a.name == DESC_ATTR for a in node.attribute)


def native_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its TTSparseConv nodes that the kernel does not support (no ``native_desc``)
    renamed to :data:`REF_OP`, so their function bodies run; ``model`` itself if there are none."""
    ref = {n.overload for n in model.graph.node
           if n.domain == DOMAIN and n.op_type == OP_TYPE and not is_native(n)}  # fmt: skip
    if not ref:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.domain == DOMAIN and n.op_type == OP_TYPE and not is_native(n):
            n.op_type = REF_OP
    for f in out.functions:
        if f.domain == DOMAIN and f.name == OP_TYPE and f.overload in ref:
            f.name = REF_OP
    return out
