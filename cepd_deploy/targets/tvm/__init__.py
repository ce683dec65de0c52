"""The TVM target: Plan -> Relax (``call_tir`` of our own TensorIR kernels) -> a shared library.

>>> from cepd_deploy.targets.tvm import TVM, load
>>> plan = load_plan(cepd_deploy.convert(build_model("resnet20"), flops_remaining=0.5)).plan  # doctest: +SKIP
>>> TVM().build(plan, "out/", TVM.Options(verify=True))                   # doctest: +SKIP
>>> model = load("out/")                                                  # doctest: +SKIP
>>> y = model(x)                                # numpy (1, 3, 32, 32) -> numpy (1, 10)  # doctest: +SKIP

Each Plan op becomes a kernel written in TE with a hand-written x86 schedule (register-blocked
GEMM / implicit-GEMM convs, AVX-512 or AVX2 vectors, parallel outer tiles, fused epilogues and
the sparse branch's scatter folded into the TT chain's last step); ``tune_trials`` adds
MetaSchedule, cached per target and workload. ``TVMCuda`` (``target="cuda"``) schedules the same
computes with TVM's dlight GPU rules.

:func:`build` compiles the Plan as given; the Targets' verbs (``TVM().build``, ``.runner``) first
apply the target's passes (``merge_pointwise``). Importing this package imports neither TVM nor
numpy and sets no environment variable: building and loading set TVM's thread-pool variables
(:data:`~cepd_deploy.targets.tvm.host.RUNTIME_ENV`) where the user has not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# light modules (TVM and numpy are imported inside their functions); imported here, not on first
# use, because ``build`` is also the name of a submodule
from cepd_deploy import lazy
from cepd_deploy.targets.tvm.build import build, compile_plan, summary
from cepd_deploy.targets.tvm.runtime import TVMModel, load
from cepd_deploy.targets.tvm.target import TVM, TVMCuda

if TYPE_CHECKING:
    from cepd_deploy.targets.tvm.lowering import HANDLERS

#: public name -> the (heavy) module that defines it, imported on first use
_LAZY = {"HANDLERS": "lowering"}


__getattr__, __dir__ = lazy.attach(__name__, _LAZY)


__all__ = ["HANDLERS", "TVM", "TVMCuda", "TVMModel", "build", "compile_plan", "load", "summary"]
