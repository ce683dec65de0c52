"""The Eyeriss target: a Plan's latency, PE use, memory traffic and energy on a simulated
row-stationary accelerator (:func:`cepd_deploy.targets.eyeriss.simulator.simulate`).

Light on purpose: the simulator, the spec loader and matplotlib are imported by the verbs.

>>> est = Eyeriss().estimate(plan, Eyeriss.Options(spec="eyeriss_scaled"))   # doctest: +SKIP
>>> est.latency_ms, est.figures["totals"]["energy"]                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op, Plan
from cepd_deploy.targets.base import Estimate, Kind, Target, option
from cepd_deploy.targets.eyeriss.schedule import DEFAULT_ZEROS, OBJECTIVES


@dataclass(frozen=True)
class EyerissOptions:
    """What the simulation runs on and for."""

    spec: str = option(
        "eyeriss_v1", "a preset in hw/eyeriss/ (eyeriss_v1, eyeriss_v1_chip, eyeriss_scaled) or a .yaml path"
    )
    objective: str = option("latency", "what the mapping search minimises", choices=OBJECTIVES)
    zeros: float | None = option(
        None,
        f"zero fraction of ReLU outputs (DRAM compression, zero gating; default {DEFAULT_ZEROS})",
        type=float,
    )

    def __post_init__(self) -> None:
        if not isinstance(self.spec, (str, os.PathLike)) or not os.fspath(self.spec):
            raise CEPDError(f"spec: expected a preset name or a .yaml path, got {self.spec!r}")
        if self.objective not in OBJECTIVES:
            raise CEPDError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        z = self.zeros
        if z is not None and (isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 <= z < 1):
            raise CEPDError(f"zeros must be a fraction in [0, 1), got {z!r}")


class Eyeriss(Target):
    """Every Plan op mapped onto an Eyeriss-like chip by a row-stationary mapping search."""

    name = "eyeriss"
    kind = Kind.SIMULATOR
    summary = "Eyeriss-like accelerator simulator: latency, PE use, memory traffic and energy per op"
    Options = EyerissOptions
    ops = frozenset(Op)
    passes = ()

    def _estimate(self, plan: Plan, options: EyerissOptions) -> Estimate:
        from cepd_deploy.targets.eyeriss import report
        from cepd_deploy.targets.eyeriss.simulator import simulate
        from cepd_deploy.targets.eyeriss.spec import load_spec

        zeros = DEFAULT_ZEROS if options.zeros is None else options.zeros
        result = simulate(plan, load_spec(options.spec), objective=options.objective, zeros=zeros)

        def draw(f: BinaryIO) -> None:
            report.draw(result, f)

        figures = result.to_json()
        return Estimate(figures["totals"]["latency_ms"], figures, report.table(result), draw)
