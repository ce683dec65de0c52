"""The TVM target: Plan -> Relax (``call_tir`` of our own TensorIR kernels) -> a shared library.

>>> from cepd_deploy.targets import tvm as tvm_target
>>> tvm_target.build(cepd_deploy.convert(build_model("resnet20"), flops_remaining=0.5), "out/",
...                  verify=True)                                             # doctest: +SKIP
>>> model = tvm_target.load("out/")                                           # doctest: +SKIP
>>> y = model(x)                                # numpy (1, 3, 32, 32) -> numpy (1, 10)  # doctest: +SKIP

Each Plan op becomes a kernel written in TE with a hand-written x86 schedule (register-blocked
GEMM / implicit-GEMM convs, AVX-512 or AVX2 vectors, parallel outer tiles, fused epilogues and
the sparse branch's scatter folded into the TT chain's last step); ``tune_trials`` adds
MetaSchedule, cached per target and workload. ``target="cuda"`` schedules the same computes
with TVM's dlight GPU rules.
"""

from __future__ import annotations

import os

from cepd_deploy.targets import TargetInfo
from cepd_deploy.targets.tvm.host import default_threads

# TVM sizes its CPU thread pool once, at first use, from $TVM_NUM_THREADS (else half the
# logical CPUs): make it the cores we may use, so ``load(threads=...)`` can choose up to that.
# It also pins each worker to a core (on a shared machine a worker pinned to a busy core stalls
# every parallel loop: TVM splits loops statically), and idle workers spin 300000 yields (long
# after a run, taking the cores from whatever runs next, e.g. onnxruntime in a benchmark):
# let the OS place them, and spin ~10000 yields (enough between the loops of one run).
os.environ.setdefault("TVM_NUM_THREADS", str(default_threads()))
os.environ.setdefault("TVM_BIND_THREADS", "0")
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "10000")

from cepd_deploy.targets.tvm.build import build, cli, compile_plan  # noqa: E402
from cepd_deploy.targets.tvm.lowering import HANDLERS, UNSUPPORTED  # noqa: E402
from cepd_deploy.targets.tvm.runtime import TVMModel, load  # noqa: E402

TARGET = TargetInfo("tvm", "runtime", HANDLERS, UNSUPPORTED)

__all__ = ["HANDLERS", "TARGET", "TVMModel", "UNSUPPORTED", "build", "cli", "compile_plan", "load"]
