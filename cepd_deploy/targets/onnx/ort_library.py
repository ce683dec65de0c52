"""The native TTSparseConv kernel as an onnxruntime custom-op library (``cepd_deploy._ort_cepd``).

Built by ``pip install`` from ``kernels/ort_customop.cpp`` and the kernel sources, against our own
declaration of onnxruntime's C API (``kernels/ort_abi.h``, API version 21: onnxruntime >= 1.21).
Registered in a session, it runs every
``ai.cepd::TTSparseConv`` node of a fused model in C++, with the weights packed once when the
session is created::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(cepd_deploy.get_library_path())
    sess = onnxruntime.InferenceSession(native_model(fused), so)

The fused exporter gives each layer the kernel supports a ``native_desc`` attribute, and every other
layer a ``ref_desc`` (:meth:`~cepd_deploy.native.layer.KernelLayer.ref_desc`): the library runs those by a
reference path (the function body's ops in plain loops, one thread), so any fused model loads as it
is. :func:`native_model` renames them instead (op :data:`REF_OP`, same function body), so onnxruntime
runs them as its own, faster standard ops; it also moves the dense 1x1 convs that follow native
layers onto the kernel (:func:`native_dense`), which saves onnxruntime's layout reorders around them.
The kernel's thread pool is its own, per process: :func:`set_threads`
(:func:`~cepd_deploy.targets.onnx.session.build_session` does it from ``threads``).
"""

from __future__ import annotations

import ctypes
import dataclasses
from functools import lru_cache

import onnx

from cepd_deploy.native.layer import KernelLayer
from cepd_deploy.native.library import extension_path, loads
from cepd_deploy.plan.ir import ConvAttrs
from cepd_deploy.targets.onnx.fused import DOMAIN, OP_TYPE

REF_OP = "TTSparseConvRef"  # unsupported layers: the function body, not claimed by the library
DESC_ATTR = "native_desc"
#: metadata key of a fused model: the layers :func:`native_model` leaves to onnxruntime (JSON list)
STANDARD_KEY = "cepd.standard_layers"


@lru_cache(maxsize=1)
def get_library_path() -> str:
    """Path of the custom-op library, for ``SessionOptions.register_custom_ops_library``."""
    return extension_path("_ort_cepd", "the onnxruntime custom-op library (cepd_deploy._ort_cepd; needs a "
                          "C++17 compiler at install; `cepd-deploy doctor` tells why not)")  # fmt: skip


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
    """Threads of the library's kernel pool (default: min(2, cores)); applies to all sessions. At
    least 1, at most the machine's (more: clamped, with a notice)."""
    from cepd_deploy.threads import clamp

    _lib().cepd_tts_set_threads(clamp(n, "custom-op library threads"))


def runs() -> int:
    """TTSparseConv kernel calls made by the library in this process (a counter, for checks)."""
    return int(_lib().cepd_ort_runs())


def is_native(node: onnx.NodeProto) -> bool:
    """Whether the library runs this node (a TTSparseConv node with a ``native_desc``)."""
    fused = node.domain == DOMAIN and node.op_type == OP_TYPE
    return fused and any(a.name == DESC_ATTR for a in node.attribute)


def mark_standard(model: onnx.ModelProto, layers) -> onnx.ModelProto:
    """``model`` (changed in place) marked so that :func:`native_model` leaves ``layers`` (Plan
    layer names) to onnxruntime's standard ops: the function bodies of their TTSparseConv nodes,
    and their dense 1x1 convs where they are (the model's metadata, :data:`STANDARD_KEY`)."""
    import json

    props = {p.key: p.value for p in model.metadata_props if p.key != STANDARD_KEY}
    if layers:
        props[STANDARD_KEY] = json.dumps(sorted(layers))
    onnx.helper.set_model_props(model, props)
    return model


def standard_layers(model: onnx.ModelProto) -> frozenset[str]:
    """The layers ``model`` is marked to leave to onnxruntime (:func:`mark_standard`)."""
    import json

    from cepd_deploy.errors import CEPDError

    for p in model.metadata_props:
        if p.key == STANDARD_KEY:
            try:
                names = json.loads(p.value)
            except ValueError:
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CEPDError(f"the model's {STANDARD_KEY} metadata is not a JSON list of layer names")
            return frozenset(names)
    return frozenset()


def native_model(model: onnx.ModelProto, *, dense: bool = True) -> onnx.ModelProto:
    """``model`` ready for the library: TTSparseConv nodes the kernel does not support (no
    ``native_desc``) or of a layer marked standard (:func:`mark_standard`) renamed to
    :data:`REF_OP`, so their function bodies run; with ``dense``, dense 1x1 convs that read a
    native node's output moved onto the kernel too (:func:`native_dense`), except those of layers
    marked standard. ``model`` itself if nothing changes."""
    standard = standard_layers(model)

    def to_ref(n: onnx.NodeProto) -> bool:
        return n.domain == DOMAIN and n.op_type == OP_TYPE and (not is_native(n) or n.overload in standard)

    ref = {n.overload for n in model.graph.node if to_ref(n)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if to_ref(n):
            n.op_type = REF_OP
    for f in out.functions:
        if f.domain == DOMAIN and f.name == OP_TYPE and f.overload in ref:
            f.name = REF_OP
    moved = native_dense(out, standard) if dense else 0
    return out if ref or moved else model


def native_dense(model: onnx.ModelProto, standard=frozenset()) -> int:
    """Move dense 1x1 convs (with the Add of a residual and a Relu that follow them) that read a
    native TTSparseConv node's output onto the kernel, in place; returns how many moved. A conv of a
    layer in ``standard`` stays (its node is named ``<layer>/...``, as the exporters name them). So is
    one that reads what a native node reads too and whose output only native nodes read: its
    input is converted to NCHW for that node anyway, and its output then needs no conversion.

    onnxruntime runs its dense convs in a blocked layout (NCHWc), the kernel in NCHW: between the
    two it inserts layout reorders, and the residual Add and Relu after such a conv run as ops of
    their own. For a 1x1 conv the kernel is a plain GEMM about as fast as onnxruntime's
    (0.88-1.06x on ResNet-50's shapes here), so moving it removes that glue. Convs that read a
    moved conv's output stay: moving whole runs of dense layers gained nothing (measured). The
    second case is layer2.0.conv1 of a ResNet-50 whose first stage stays dense (``LibraryLatency``):
    one 1.6 MB reorder less, whole model 0.6-0.8% faster.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*g.input, *g.value_info, *g.output)}  # fmt: skip
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            users.setdefault(x, []).append(n)
    outputs = {v.name for v in g.output}
    native = {n.output[0] for n in g.node if is_native(n)}
    shared = {n.input[0] for n in g.node if is_native(n)}  # inputs native nodes read

    def sole_user(value: str, op: str) -> onnx.NodeProto | None:
        u = users.get(value, [])
        ok = len(u) == 1 and u[0].op_type == op and u[0].domain == "" and value not in outputs
        return u[0] if ok else None

    replace: dict[int, onnx.NodeProto] = {}  # id of the last absorbed node -> the native node
    gone: set[int] = set()
    for n in g.node:
        reads = n.input[0] if n.input else None
        mine = n.name.split("/", 1)[0] not in standard
        k = _dense_1x1(n, inits, shapes) if mine and (reads in native or reads in shared) else None
        if k is None:
            continue
        absorbed, y, residual = [n], n.output[0], None
        add = sole_user(y, "Add")
        if add is not None and len(add.input) == 2:
            other = add.input[1] if add.input[0] == y else add.input[0]
            if other != y and tuple(shapes.get(other) or ()) == k.out_shape:
                absorbed.append(add)
                y, residual = add.output[0], other
        relu = sole_user(y, "Relu")
        if relu is not None:
            absorbed.append(relu)
            y = relu.output[0]
        if reads not in native and (residual or y in outputs or not all(map(is_native, users.get(y, [])))):
            continue  # the second case: no residual, and only native nodes read the output
        k = dataclasses.replace(k, residual=residual is not None, act="relu" if relu is not None else "")
        attrs = {DESC_ATTR: k.desc(), "act": k.act, "residual": int(residual is not None)}
        inputs = [*n.input[: 3 if k.bias else 2]] + ([residual] if residual else [])
        node = onnx.helper.make_node(OP_TYPE, inputs, [y], name=f"{n.name}/native", domain=DOMAIN, **attrs)
        replace[id(absorbed[-1])] = node
        gone.update(id(a) for a in absorbed[:-1])
    if not replace:
        return 0
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in gone]
    del g.node[:]
    g.node.extend(nodes)
    return len(replace)


def _dense_1x1(n: onnx.NodeProto, inits: dict, shapes: dict) -> KernelLayer | None:
    """The kernel's layer of a standard 1x1 Conv node with constant weights, or None if it is not
    one the kernel runs."""
    if n.op_type != "Conv" or n.domain != "" or len(n.input) < 2 or n.input[1] not in inits:
        return None
    a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
    w = inits[n.input[1]]
    bias = len(n.input) > 2 and n.input[2] != ""
    in_shape, out_shape = shapes.get(n.input[0]), shapes.get(n.output[0])
    plain = (a.get("group", 1) == 1 and list(a.get("pads", [0] * 4)) == [0] * 4
             and list(a.get("dilations", [1, 1])) == [1, 1] and a.get("auto_pad", b"NOTSET") == b"NOTSET"
             and len(w.dims) == 4 and list(w.dims[2:]) == [1, 1]
             and w.data_type == onnx.TensorProto.FLOAT)  # fmt: skip
    known = in_shape and out_shape and 0 not in in_shape[1:]
    if not plain or not known or (bias and n.input[2] not in inits):
        return None
    step = ConvAttrs((1, 1), cin=int(w.dims[1]), cout=int(w.dims[0]))
    k = KernelLayer(tuple(in_shape), tuple(out_shape), (step,), tuple(a.get("strides", [1, 1])), bias=bias)
    return k if k.unsupported() is None else None
