"""One CEPD layer on the native kernel: :class:`NativeLayer` (weights packed once at creation, a
reusable workspace, ``run(x, residual)`` on float32 NCHW batches), described by a
:class:`~cepd_deploy.native.layer.KernelLayer`; :func:`from_plan` makes one for a layer of a Plan.
"""

from __future__ import annotations

import ctypes

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.native.layer import KernelLayer
from cepd_deploy.native.library import _lib
from cepd_deploy.plan.ir import WEIGHTED, Plan


class NativeLayer:
    """A layer on the native kernel. ``weights``: the chain's contraction weights in order, then
    the S filters (if kappa > 0), then scale and bias (if the epilogue has them); ``index``: the
    output channels of the S filters."""

    def __init__(self, spec: KernelLayer, weights: list[np.ndarray], index=None) -> None:
        desc = np.array(spec.desc(), np.int64)  # raises if the kernel does not run the layer
        self.spec = spec
        self.in_chw = tuple(spec.in_shape[1:])
        self.out_chw = tuple(spec.out_shape[1:])
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
        if self.spec.residual and (residual is None or residual.shape != y.shape):
            raise CEPDError("TTSparseConv: this layer needs a residual of the output's shape")
        res = residual.ctypes.data if self.spec.residual else None
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


def layer_arrays(plan: Plan, name: str) -> tuple[KernelLayer, list[np.ndarray], list[int] | None]:
    """What ``cepd_tts_create`` takes for CEPD layer ``name`` of ``plan`` (BN folded into its
    epilogue, as the fused export runs it): the layer, its weights in the kernel's order and the
    S filters' output channels (or None)."""
    block = next((b for b in plan.blocks() if b.layer == name), None)
    if block is None:
        raise CEPDError(f"{name!r} is not a CEPD layer of this Plan")
    weights = [plan.consts[w] for n in block.nodes if n.op in WEIGHTED for w in n.weights]
    weights += [plan.consts[c] for c in (block.epilogue.scale, block.epilogue.bias) if c]
    return KernelLayer.from_block(block), weights, list(block.index) or None


def from_plan(plan: Plan, name: str) -> tuple[NativeLayer, str, str | None]:
    """The kernel for CEPD layer ``name`` of ``plan`` (:func:`layer_arrays`), with the names of the
    layer's input and residual values (or None)."""
    spec, weights, index = layer_arrays(plan, name)
    block = next(b for b in plan.blocks() if b.layer == name)
    return NativeLayer(spec, weights, index), block.input, block.residual
