"""The settings of a ``compress`` run (:class:`CompressConfig`), free of heavy imports: the
command line reads its defaults while building its parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cepd_deploy.errors import CEPDError
from cepd_deploy.names import ALLOCATIONS

if TYPE_CHECKING:
    from cepd_deploy.compress.admm import Penalty


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum and cosine decay over the phase (stepped per iteration)."""

    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class CompressConfig:
    """Everything a compress run depends on (defaults: the digits acceptance run)."""

    output: str
    arch: str | None = "resnet20"
    data: str = "digits"
    flops_remaining: float | None = None
    params_remaining: float | None = None
    config: str | None = None
    sparsity: float = 0.9
    layout: str = "o-k-i"
    allocation: str = "uniform"  # or "ort-latency" (see cepd_deploy.frontend.allocation)
    weights: str | None = None
    baseline_out: str | None = None
    plot: str | None = None  # a PNG of the training curves, only when asked for
    epochs_baseline: int = 20
    epochs_admm: int = 10
    epochs_finetune: int = 10
    lr_baseline: float = 0.1
    lr_admm: float = 0.01
    lr_finetune: float = 0.001
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    admm_lambda: float = 1.0
    admm_lambda_growth: float = 1.5
    admm_lambda_max: float = 50.0
    project_every: int = 5
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    image_size: int | None = None
    resume: bool = False
    workers: int = 0
    threads: int | None = None

    def validate(self) -> None:
        goals = [x is not None for x in (self.flops_remaining, self.params_remaining, self.config)]
        if sum(goals) != 1:
            raise CEPDError("give exactly one of --flops-remaining, --params-remaining or --config")
        for name in ("epochs_baseline", "epochs_admm", "epochs_finetune", "project_every"):
            if getattr(self, name) < 0:
                raise CEPDError(f"{name.replace('_', '-')} must be >= 0")
        for name in ("lr_baseline", "lr_admm", "lr_finetune", "batch_size"):
            if getattr(self, name) <= 0:
                raise CEPDError(f"{name.replace('_', '-')} must be > 0")
        if self.admm_lambda < 0 or self.admm_lambda_growth <= 0 or self.admm_lambda_max < 0:
            raise CEPDError("the ADMM penalty settings must be non-negative (growth > 0)")
        if self.allocation not in ALLOCATIONS:
            raise CEPDError(f"unknown allocation {self.allocation!r}: {' or '.join(ALLOCATIONS)}")
        if self.allocation != "uniform" and self.config is not None:
            raise CEPDError(f"--allocation {self.allocation} needs a FLOPs or params target, not --config")

    def goal(self) -> dict:
        from cepd_deploy.frontend.allocation import allocation_kwargs

        return dict(flops_remaining=self.flops_remaining, params_remaining=self.params_remaining,
                    config=self.config, sparsity=self.sparsity, layout=self.layout,
                    **allocation_kwargs(self.allocation, self.threads or 2))  # fmt: skip

    @property
    def penalty(self) -> Penalty:
        from cepd_deploy.compress.admm import Penalty

        return Penalty(self.admm_lambda, self.admm_lambda_growth, self.admm_lambda_max)

    def schedule(self, phase: str) -> Schedule:

        epochs, lr = {"baseline": (self.epochs_baseline, self.lr_baseline),
                      "admm": (self.epochs_admm, self.lr_admm),
                      "finetune": (self.epochs_finetune, self.lr_finetune)}[phase]  # fmt: skip
        return Schedule(epochs, lr, self.momentum, self.weight_decay)
