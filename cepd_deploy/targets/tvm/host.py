"""TVM targets: the host CPU (its SIMD features pick ``mcpu``) and CUDA, as JSON-dict Targets.

>>> describe("llvm")["mcpu"]              # doctest: +SKIP
'znver4'
"""

from __future__ import annotations

import os
from functools import lru_cache

from cepd_deploy.errors import CEPDError

#: the target kinds ``build`` accepts
KINDS = ("llvm", "cuda")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags (empty where /proc/cpuinfo is not available)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def _vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def host_mcpu(flags: frozenset[str] | None = None, vendor: str | None = None) -> str:
    """An LLVM ``mcpu`` that enables the host's vector extensions (AVX-512 > AVX2 > SSE)."""
    flags = cpu_flags() if flags is None else flags
    vendor = _vendor() if vendor is None else vendor
    amd = vendor == "AuthenticAMD"
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "znver4" if amd else "skylake-avx512"
    if {"avx2", "fma"} <= flags:
        return "znver2" if amd else "haswell"
    return "x86-64"


def simd_lanes(flags: frozenset[str] | None = None) -> int:
    """float32 lanes of one vector register: 16 (AVX-512), 8 (AVX2) or 4 (SSE)."""
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return 16
    return 8 if "avx2" in flags else 4


def default_threads() -> int:
    """Threads for the CPU runtime: $TVM_NUM_THREADS, else the cores this process may use."""
    env = os.environ.get("TVM_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


#: TVM's CPU thread pool settings, read once when TVM first runs a parallel loop (the user's own
#: values win): as many workers as the cores we may use (``load(threads=...)`` can choose up to
#: that), not pinned to cores (on a shared machine a worker pinned to a busy core stalls every
#: parallel loop: TVM splits loops statically), and ~10000 idle spins, not 300000 (long after a
#: run, taking the cores from whatever runs next, e.g. onnxruntime in a benchmark).
RUNTIME_ENV = ("TVM_NUM_THREADS", "TVM_BIND_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")


def configure_runtime() -> None:
    """Set :data:`RUNTIME_ENV` where the user has not. Called by whatever starts TVM's runtime
    (compiling, tuning, loading) before its thread pool exists; importing this package sets nothing."""
    os.environ.setdefault("TVM_NUM_THREADS", str(default_threads()))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "10000")


def describe(kind: str = "llvm", *, threads: int | None = None, arch: str | None = None) -> dict:
    """The JSON-dict form of a TVM target (TVM 0.27 rejects target strings).

    ``llvm``: the host CPU. ``cuda``: an NVIDIA GPU (``arch`` like ``sm_90``; default: the
    visible GPU's, else ``sm_80``).
    """
    if kind == "llvm":
        return {"kind": "llvm", "mcpu": host_mcpu(), "num-cores": int(threads or default_threads())}
    if kind == "cuda":
        return {
            "kind": "cuda",
            "arch": arch or _cuda_arch(),
            "max_num_threads": 1024,
            "thread_warp_size": 32,
            "max_shared_memory_per_block": 49152,
        }
    raise CEPDError(f"unknown TVM target {kind!r}; valid: {', '.join(KINDS)}")


def make_target(kind: str = "llvm", **kw):
    """A ``tvm.target.Target`` for :func:`describe`'s dict."""
    import tvm

    return tvm.target.Target(describe(kind, **kw))


def _cuda_arch() -> str:
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # no CUDA runtime on this machine
        pass
    return "sm_80"
