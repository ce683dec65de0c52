"""How each target gives the latency of a batch, through the Target interface: modelled
(``estimate``, a cost model of the Plan) or measured (``runner``, a callable the harness times).
Which is which comes from the registry: a target that runs is measured."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from cepd_deploy import targets
from cepd_deploy.plan.ir import Plan


def measured(name: str) -> bool:
    """Whether bench times target ``name`` (it has a runner) rather than modelling it."""
    return targets.get(name).can("runner")


def bench_targets() -> list[str]:
    """Every target bench can put in its table."""
    return [t.name for t in targets.all_targets() if t.can("runner") or t.can("estimate")]


def modelled_ms(name: str, plan: Plan, options: Mapping | None = None) -> tuple[float, dict]:
    """(latency in ms of the Plan's whole batch, details) from the target's estimate of ``plan``."""
    target = targets.get(name)
    opts = target.options(options)
    est = target.estimate(plan, opts)
    details = {"options": dataclasses.asdict(opts)}
    details.update({k: est.figures[k] for k in ("totals", "resources") if k in est.figures})
    return est.latency_ms, details


def runner(name: str, plan: Plan, threads: int, workdir: Path, options: Mapping | None = None) -> Callable:
    """A callable ``f(x: np.ndarray)`` running one inference of ``plan`` (its whole batch) on the
    target ``name``; the target writes what it builds under ``workdir``."""
    target = targets.get(name)
    return target.runner(plan, threads, workdir, target.options(options))
