"""The eager-torch Target: a runner over :mod:`cepd_deploy.plan.reference`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cepd_deploy.plan.ir import Plan
from cepd_deploy.targets.base import Kind, Runner, Target


class Torch(Target):
    """Runs the Plan in eager PyTorch, op by op through the reference interpreter (measured)."""

    name = "torch"
    kind = Kind.RUNTIME
    summary = "eager PyTorch on this CPU, the Plan's ops one by one (the reference interpreter)"

    def _runner(self, plan: Plan, threads: int, workdir: Path, options: Any) -> Runner:
        import torch

        from cepd_deploy.plan.reference import run_nodes, torch_consts

        torch.set_num_threads(threads)
        weights = torch_consts(plan)

        def run(x):
            with torch.inference_mode():
                env = run_nodes(plan.nodes, {plan.input: torch.from_numpy(x)}, weights)
                return env[plan.output].numpy()

        return run
