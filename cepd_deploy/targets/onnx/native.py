"""The native TTSparseConv kernel (``kernels/ttsparse.cpp``, built as ``cepd_deploy._ttsparse``).

One :class:`NativeLayer` per CEPD layer: weights packed once at creation, a reusable workspace,
``run(x, residual)`` on float32 NCHW batches. It supports chains of matmul/conv steps on
unfolded views (the ``o-k-i`` layout, and any layout whose chain needs no permute or folding);
:func:`supported` tells. Used by eager torch (:func:`accelerate`) and by onnxruntime through an
onnxruntime-extensions custom op (:mod:`cepd_deploy.targets.onnx.ort_native`).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from functools import lru_cache
from pathlib import Path

import numpy as np

from cepd_deploy.errors import CEPDError

_ACTS = {"": 0, "relu": 1, "relu6": 2}


def extension_path(stem: str, what: str) -> str:
    """Path of the package's compiled library ``stem`` (built by ``pip install``), or a one-line
    error naming ``what`` is missing."""
    here = Path(__file__).resolve().parents[2]  # the cepd_deploy package folder
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{stem}{suffix}"
        if path.exists():
            return str(path)
    raise CEPDError(f"{what} is not built; reinstall with `pip install -e .`")


def loads(lib) -> bool:
    """Whether ``lib()`` (a cached ctypes loader) finds and loads its library."""
    try:
        lib()
    except (CEPDError, OSError):
        return False
    return True


@lru_cache(maxsize=1)
def library_path() -> str:
    """Path of the compiled kernel library (built by ``pip install``)."""
    return extension_path("_ttsparse", "the native TTSparseConv kernel")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(library_path())
    lib.cepd_tts_create.restype = ctypes.c_void_p
    lib.cepd_tts_create.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_void_p),
                                    ctypes.POINTER(ctypes.c_int64)]  # fmt: skip
    lib.cepd_tts_destroy.argtypes = [ctypes.c_void_p]
    lib.cepd_tts_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_int]  # fmt: skip
    lib.cepd_tts_set_threads.argtypes = [ctypes.c_int]
    lib.cepd_tts_use_winograd.argtypes = [ctypes.c_int]
    lib.cepd_tts_winograd.argtypes = [ctypes.c_void_p]
    return lib


def available() -> bool:
    return loads(_lib)


def set_threads(n: int) -> None:
    """Threads of the kernel's pool (default: min(2, cores))."""
    _lib().cepd_tts_set_threads(int(n))


ISAS = ("scalar", "avx2", "avx512f")  # the kernel's tile builds, by level


def isa() -> str:
    """The instruction set the kernel dispatches to (the best this CPU has, unless :func:`use_isa`)."""
    return ISAS[_lib().cepd_tts_isa()]


def use_isa(name: str) -> None:
    """Dispatch to the tile build for ``name`` (one of :data:`ISAS`, at most what this CPU has);
    for tests and comparisons, not while layers run."""
    if name not in ISAS or _lib().cepd_tts_use_isa(ISAS.index(name)) != 0:
        raise CEPDError(f"instruction set {name!r} is not available on this CPU (the kernel has {ISAS})")


WINOGRAD = ("never", "auto", "always")  # when a 3x3 stride-1 sparse branch runs as Winograd F(2x2, 3x3)


def use_winograd(mode: str) -> None:
    """For layers created from now on: run 3x3 stride-1 sparse branches by Winograd F(2x2, 3x3)
    "auto" (where it pays, the default), "never" or "always" (tests and comparisons)."""
    if mode not in WINOGRAD:
        raise CEPDError(f"Winograd mode must be one of {WINOGRAD}, got {mode!r}")
    _lib().cepd_tts_use_winograd(WINOGRAD.index(mode))


def supported(st: dict) -> str | None:
    """Why a layer structure (see ``fused.structure``) is not supported natively, or None."""
    convs = [s for s in st["steps"] if s["op"] == "conv"]
    for s in st["steps"]:
        if s["op"] not in ("matmul", "conv") or s["outer"] != 1 or s["inner"] != 1:
            return "a chain step needs a permute or a folded view"
    if len(convs) > 1 or any(c["groups"] != 1 for c in convs):
        return "more than one (or a grouped) conv step"
    if st["act"] not in _ACTS:
        return f"activation {st['act']!r}"
    sc = st["s_conv"]
    if sc and convs:
        c = convs[0]
        if (sc["kernel"], sc["padding"], sc["dilation"], sc["stride"]) != (
            c["kernel"], c["padding"], c["dilation"], c["stride"]):  # fmt: skip
            return "the sparse branch's window differs from the conv step's"
    if sc and not convs and (sc["kernel"], sc["stride"], sc["padding"]) != ([1, 1], [1, 1], [0, 0]):
        return "a windowed sparse branch without a conv step"
    return None


def _desc(st: dict) -> list[int]:
    conv = next((s for s in st["steps"] if s["op"] == "conv"), None)
    geom = [1, 1, 1, 1, 0, 0, 1, 1]
    if conv is not None:
        geom = [v for key in ("kernel", "stride", "padding", "dilation") for v in conv[key]]
    sub = st["subsample"]
    if sub != [1, 1] and geom[2:4] != [1, 1]:
        raise CEPDError("a subsampled layer must have a stride-1 conv step")
    desc = [*st["in_shape"][1:], *st["out_shape"][1:], *sub, *geom, len(st["steps"]), st["kappa"],
            int(st["scale"]), int(st["bias"]), int(st["residual"]), _ACTS[st["act"]]]  # fmt: skip
    for s in st["steps"]:
        desc += [int(s["op"] == "conv"), s["cin"], s["cout"]]
    return desc


class NativeLayer:
    """A CEPD layer on the native kernel. ``weights``: step weights in chain order, then the S
    filters (if kappa > 0), then scale and bias (if the structure has them)."""

    def __init__(self, st: dict, weights: list[np.ndarray], index=None) -> None:
        why = supported(st)
        if why is not None:
            raise CEPDError(f"TTSparseConv layer not supported natively: {why}")
        self.st = st
        self.in_chw = tuple(st["in_shape"][1:])
        self.out_chw = tuple(st["out_shape"][1:])
        desc = np.array(_desc(st), np.int64)
        arrays = [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
        ptrs = (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])
        idx = np.ascontiguousarray(index if index is not None else [], dtype=np.int64)
        self._lib = _lib()
        self._handle = self._lib.cepd_tts_create(
            desc.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), ptrs,
            idx.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)))  # fmt: skip

    @property
    def winograd(self) -> bool:
        """Whether this layer's sparse branch runs by Winograd."""
        return bool(self._lib.cepd_tts_winograd(self._handle))

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.cepd_tts_destroy(handle)
            self._handle = None

    def run_into(self, x: np.ndarray, y: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        """Compute into ``y`` (contiguous float32, shape (n, *out_chw))."""
        n = x.shape[0]
        if x.shape[1:] != self.in_chw or y.shape != (n, *self.out_chw):
            raise CEPDError(f"TTSparseConv expects input (N, {self.in_chw}), got {x.shape}")
        if self.st["residual"] and (residual is None or residual.shape != y.shape):
            raise CEPDError("TTSparseConv: this layer needs a residual of the output's shape")
        res = residual.ctypes.data if self.st["residual"] else None
        self._lib.cepd_tts_run(self._handle, x.ctypes.data, res, y.ctypes.data, n)
        return y

    def run_reused(self, x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        """Like calling the layer, but into an output buffer reused across calls (valid until
        the next call: for callers that copy it out at once)."""
        shape = (x.shape[0], *self.out_chw)
        out = getattr(self, "_out", None)
        if out is None or out.shape != shape:
            out = self._out = np.empty(shape, np.float32)
        return self.run_into(np.ascontiguousarray(x, dtype=np.float32), out, residual)

    def __call__(self, x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if residual is not None:
            residual = np.ascontiguousarray(residual, dtype=np.float32)
        y = np.empty((x.shape[0], *self.out_chw), np.float32)
        return self.run_into(x, y, residual)


def from_plan(plan, name: str) -> tuple[NativeLayer, str, str | None]:
    """The kernel for CEPD layer ``name`` of ``plan`` as the fused export runs it (BN folded into
    its epilogue), with the names of the layer's input and residual values (or None)."""
    from cepd_deploy.plan.ir import WEIGHTED, Op
    from cepd_deploy.targets.onnx.fused import layer_io, structure

    nodes, x, r = layer_io(plan, name)
    weights = [plan.consts[w] for n in nodes if n.op in WEIGHTED for w in n.weights]
    e = nodes[-1].epilogue
    weights += [plan.consts[c] for c in (e.scale, e.bias) if c]
    scatter = next((n for n in nodes if n.op is Op.SCATTER_ADD), None)
    return NativeLayer(structure(nodes), weights, scatter.attrs["index"] if scatter else None), x, r


# -- eager torch ---------------------------------------------------------------------------------
class _NativeConv:
    """Forward of one CEPDConv2d on the kernel (inference only; layers built per input shape)."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.cache: dict[tuple, NativeLayer] = {}

    def build(self, shape: tuple[int, ...]) -> NativeLayer:
        import torch

        from cepd_deploy.plan.ir import WEIGHTED
        from cepd_deploy.plan.ttconv import lower_ttconv, ttconv_weights
        from cepd_deploy.targets.onnx.fused import structure

        lay = self.layer
        index = tuple(int(i) for i in lay.s_index.tolist())
        path = lay.path_for(shape)
        nodes = lower_ttconv(lay.spec, "l", "x", shape, path, bias=lay.bias is not None, index=index)
        with torch.no_grad():
            w = ttconv_weights(lay.spec, "l", path, lay.cores, lay.s_weight, lay.s_index)
            if lay.bias is not None:
                w["l.bias"] = lay.bias
            arrays = {k: v.detach().float().cpu().numpy() for k, v in w.items()}
        names = [x for n in nodes if n.op in WEIGHTED for x in n.weights]
        names += [x for x in (nodes[-1].epilogue.scale, nodes[-1].epilogue.bias) if x]
        return NativeLayer(structure(nodes), [arrays[x] for x in names], index)

    def __call__(self, module, args):
        import torch

        (x,) = args
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return None  # training or another device: the layer's own forward
        x = x.contiguous()
        key = tuple(x.shape[1:])
        if key not in self.cache:
            self.cache[key] = self.build((1, *key))
        native = self.cache[key]
        y = torch.empty((x.shape[0], *native.out_chw), dtype=torch.float32)
        native._lib.cepd_tts_run(native._handle, x.data_ptr(), None, y.data_ptr(), x.shape[0])
        return y


def accelerate(model):
    """Make every CEPDConv2d of ``model`` run the native kernel under ``torch.no_grad()``
    (in place; unsupported layouts keep their torch forward). Returns ``model``.

    >>> with torch.no_grad():                                # doctest: +SKIP
    ...     y = accelerate(model.eval())(x)
    """
    from cepd_deploy.model.layers import CEPDConv2d

    _lib()
    for m in model.modules():
        if isinstance(m, CEPDConv2d) and not getattr(m, "_cepd_native", None):
            hook = _NativeConv(m)
            try:
                hook.build((1, m.in_channels, 8 * m.kernel_size[0], 8 * m.kernel_size[1]))
            except CEPDError:
                continue  # not supported natively: keep the torch forward
            m._cepd_native = hook
            m.forward = _forward_with(m, hook, m.forward)
    return model


def _forward_with(module, hook, original):
    def forward(x):
        y = hook(module, (x,))
        return original(x) if y is None else y

    return forward
