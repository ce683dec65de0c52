"""The native TTSparseConv kernel library (``kernels/ttsparse.cpp``, built as ``cepd_deploy._ttsparse``):
loading it, its thread pool, the instruction set its tiles dispatch to and when it uses Winograd.

It serves eager torch (:mod:`cepd_deploy.native.eager`), onnxruntime (the custom-op library
``cepd_deploy._ort_cepd`` is built from the same sources) and the benchmarks.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import platform
from functools import lru_cache
from pathlib import Path

from cepd_deploy.errors import CEPDError


def extension_path(stem: str, what: str) -> str:
    """Path of the package's compiled library ``stem`` (built by ``pip install``), or a one-line
    error naming ``what`` is missing."""
    here = Path(__file__).resolve().parents[1]  # the cepd_deploy package folder
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
    """Whether the kernel library is built and loads."""
    return loads(_lib)


def set_threads(n: int) -> None:
    """Threads of the kernel's pool (default: min(2, cores)); at least 1, at most the machine's
    (more: clamped, with a notice)."""
    from cepd_deploy.threads import clamp

    _lib().cepd_tts_set_threads(clamp(n, "native kernel threads"))


#: the kernel's tile builds on this machine, by level (``cepd_tts_isa_names``): x86-64 has AVX2 and
#: AVX-512 builds, AArch64 a NEON one (setup.py compiles each machine's tile sources)
ARM64 = platform.machine().lower() in ("aarch64", "arm64")
ISAS = ("scalar", "neon") if ARM64 else ("scalar", "avx2", "avx512f")


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
