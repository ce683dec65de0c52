"""The native TTSparseConv kernel (``kernels/ttsparse.cpp``, built as ``cepd_deploy._ttsparse``), for
eager torch, onnxruntime (the custom-op library is built from the same sources) and the benchmarks.

* :class:`KernelLayer`: what the kernel runs, one typed description of a layer built from a Plan's
  CEPD block; it gives the int64 descriptors the C ABI takes.
* :class:`NativeLayer`: a layer on the kernel (weights packed once); :func:`from_plan` makes one
  for a layer of a Plan.
* :func:`accelerate`: a torch model's CEPD convs on the kernel (inference).
* the library: :func:`available`, :func:`set_threads`, :func:`isa` / :func:`use_isa`,
  :func:`use_winograd`.

It supports chains of matmul/conv steps on unfolded views (the ``o-k-i`` layout, and any layout
whose chain needs no permute or folding); :meth:`KernelLayer.unsupported` tells. Names are
imported on first use (numpy and torch load then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cepd_deploy import lazy

#: public name -> the module that defines it
_LAZY = {
    "ACTS": "layer",
    "KernelLayer": "layer",
    "Window": "layer",
    "ISAS": "library",
    "WINOGRAD": "library",
    "available": "library",
    "extension_path": "library",
    "isa": "library",
    "library_path": "library",
    "loads": "library",
    "set_threads": "library",
    "use_isa": "library",
    "use_winograd": "library",
    "NativeLayer": "kernel",
    "from_plan": "kernel",
    "accelerate": "eager",
}

if TYPE_CHECKING:
    from cepd_deploy.native.eager import accelerate
    from cepd_deploy.native.kernel import NativeLayer, from_plan
    from cepd_deploy.native.layer import ACTS, KernelLayer, Window
    from cepd_deploy.native.library import (
        ISAS,
        WINOGRAD,
        available,
        extension_path,
        isa,
        library_path,
        loads,
        set_threads,
        use_isa,
        use_winograd,
    )


__getattr__, __dir__ = lazy.attach(__name__, _LAZY)


__all__ = [
    "ACTS",
    "ISAS",
    "WINOGRAD",
    "KernelLayer",
    "NativeLayer",
    "Window",
    "accelerate",
    "available",
    "extension_path",
    "from_plan",
    "isa",
    "library_path",
    "loads",
    "set_threads",
    "use_isa",
    "use_winograd",
]
