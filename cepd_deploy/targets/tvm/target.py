"""The TVM Targets: a Plan compiled by TVM (Relax VM + our TensorIR kernels) into a shared library,
for this CPU (``tvm``, alias ``llvm``) or an NVIDIA GPU (``cuda``).

Light on purpose: TVM, numpy and the lowering are imported by the verbs.

>>> built = TVM().build(plan, "out/", TVM.Options(verify=True))     # doctest: +SKIP
>>> built.figures["verify"]["max_rel_err"]["plan"]                 # doctest: +SKIP
>>> run = TVM().runner(plan, threads=2, workdir="work/")            # doctest: +SKIP
>>> y = run(x)                         # numpy in -> numpy out, the Plan's whole batch
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cepd_deploy import threads as thread_counts
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op, Plan
from cepd_deploy.targets.base import Built, Kind, Runner, Target, option


@dataclass(frozen=True)
class TVMOptions:
    """How the library is built."""

    verify: bool = option(False, "run the built library on a random input against the Plan's reference")
    tune_trials: int = option(0, "MetaSchedule trials per distinct kernel, cached (tvm only; 0: untuned)",
                              metavar="N")  # fmt: skip
    threads: int | None = option(None, "CPU threads the build targets (tvm/llvm; default: all)",
                                 type=thread_counts.arg)  # fmt: skip
    label: str | None = option(None, "the name the manifest records (default: 'plan')")

    def __post_init__(self) -> None:
        t = self.tune_trials
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise CEPDError(f"--tune-trials must be a whole number >= 0, got {t!r}")
        if self.threads is not None:
            thread_counts.clamp(self.threads, "--threads")
        if self.label is not None and not isinstance(self.label, str):
            raise CEPDError(f"label must be text, got {self.label!r}")


class TVM(Target):
    """Every Plan op as one of our scheduled kernels (fused epilogues, the S branch's scatter
    folded into the TT chain's last step), compiled for this CPU."""

    name = "tvm"
    kind = Kind.COMPILER
    summary = "TVM: our hand-scheduled kernels compiled into a shared library for this CPU"
    Options = TVMOptions
    ops = frozenset(Op)
    passes = ("merge_pointwise",)
    #: the TVM target kind ``build`` compiles for
    device: ClassVar[str] = "llvm"

    def _build(self, plan: Plan, out: Path, options: TVMOptions) -> Built:
        from cepd_deploy.targets.tvm.build import build, summary

        manifest = build(
            plan,
            out,
            target=self.device,
            verify=options.verify,
            tune_trials=options.tune_trials,
            threads=options.threads,
            label=options.label,
            log=_stderr,
        )
        return Built(figures=manifest, text=summary(manifest))

    def _runner(self, plan: Plan, threads: int, workdir: Path, options: TVMOptions) -> Runner:
        """Build into a new folder under ``workdir``, then load it with ``threads`` threads."""
        import tempfile

        from cepd_deploy.targets.tvm.build import build
        from cepd_deploy.targets.tvm.runtime import load

        try:
            workdir.mkdir(parents=True, exist_ok=True)
            out = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=workdir))
        except OSError as exc:
            raise CEPDError(f"cannot create a build folder in {workdir}: {exc.strerror or exc}") from None
        build(
            plan,
            out,
            target=self.device,
            verify=options.verify,
            tune_trials=options.tune_trials,
            threads=threads,
            label=options.label,
            log=_stderr,
        )
        return load(out, threads=threads)


class TVMCuda(TVM):
    """The same kernels as plain computes, scheduled by TVM's dlight GPU rules (CUDA C, compiled by
    NVRTC or nvcc when built); running it needs an NVIDIA GPU."""

    name = "cuda"
    summary = "TVM for an NVIDIA GPU: the same kernels scheduled by dlight, compiled to CUDA"
    device = "cuda"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
