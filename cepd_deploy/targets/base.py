"""The Target interface: what every backend is and does, in one contract.

A target is a small class with a name, a :class:`Kind`, an options dataclass, the Plan ops it
runs, the Plan passes it wants, and the verbs its kind has:

* ``build(plan, out, options) -> Built``: write a deployable artifact into the folder ``out``;
* ``estimate(plan, options) -> Estimate``: the Plan's cost on modelled or simulated hardware;
* ``runner(plan, threads, workdir, options)``: a callable ``f(x: ndarray) -> ndarray`` that runs
  the Plan on this machine (what ``bench`` times).

Callers use the public verbs, which apply the target's passes (verified after each) and check
that every op of the Plan is supported before the target's own ``_build`` / ``_estimate`` /
``_runner`` run. A target never sees argparse or a torch module; its module imports nothing
heavy at the top (the registry imports every target to list them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op, Plan

if TYPE_CHECKING:
    import numpy as np

Runner = Callable[["np.ndarray"], "np.ndarray"]


class Kind(str, Enum):
    """What a target is: a runtime or a compiler (latency measured here), a hardware model or a
    simulator (latency modelled)."""

    RUNTIME = "runtime"  # runs the Plan here; latency is measured (runner)
    COMPILER = "compiler"  # compiles the Plan into a library (build; runner where it runs here)
    MODEL = "model"  # emits a hardware project; latency from a model of that hardware (build, estimate)
    SIMULATOR = "simulator"  # latency and energy from simulating hardware (estimate)

    @property
    def measured(self) -> bool:
        return self in (Kind.RUNTIME, Kind.COMPILER)


def option(default: Any, help: str, **kw) -> Any:
    """A field of a target's options dataclass; ``help`` is what the command line shows."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class NoOptions:
    """A target without options."""


@dataclass(frozen=True)
class Built:
    """What ``build`` made: the figures (JSON), a text summary, and whether its own checks passed."""

    figures: dict
    text: str
    ok: bool = True
    problem: str = ""  # one line naming the failed check, when not ok


@dataclass(frozen=True)
class Estimate:
    """A Plan's cost on modelled or simulated hardware, for the Plan's whole batch."""

    latency_ms: float
    figures: dict
    text: str
    draw: Callable[[BinaryIO], None] | None = None  # writes a PNG figure of the estimate, if any


class Target:
    """Base of every target; subclasses set the class attributes and override their verbs."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    summary: ClassVar[str]  # one line for --help listings
    Options: ClassVar[type] = NoOptions
    #: Plan ops this target runs (the registry-wide test runs each against the reference)
    ops: ClassVar[frozenset[Op]] = frozenset(Op)
    #: Plan passes applied before every verb (names in :data:`cepd_deploy.plan.passes.PASSES`)
    passes: ClassVar[tuple[str, ...]] = ()

    # -- what a target is -----------------------------------------------------------------
    @classmethod
    def verbs(cls) -> tuple[str, ...]:
        """The verbs this target implements (``build``, ``estimate``, ``runner``)."""
        verbs = ("build", "estimate", "runner")
        return tuple(v for v in verbs if getattr(cls, f"_{v}") is not getattr(Target, f"_{v}"))

    def can(self, verb: str) -> bool:
        return verb in self.verbs()

    def options(self, values: Mapping[str, Any] | None = None, **kw) -> Any:
        """This target's options from ``values`` (e.g. parsed arguments; ``None`` values and
        names it does not have are ignored) and keywords."""
        names = {f.name for f in dataclasses.fields(self.Options)}
        given = {k: v for k, v in {**(values or {}), **kw}.items() if k in names and v is not None}
        return self.Options(**given)

    # -- the verbs ------------------------------------------------------------------------
    def prepare(self, plan: Plan) -> Plan:
        """``plan`` after this target's passes; refuses an op the target does not run."""
        from cepd_deploy.plan import passes

        missing = sorted({n.op.value for n in plan.nodes} - {op.value for op in self.ops})
        if missing:
            raise CEPDError(f"target {self.name!r} does not run the op(s) {', '.join(missing)} of this model")
        return passes.run(plan, self.passes)

    def build(self, plan: Plan, out: str | Path, options: Any = None) -> Built:
        self._require("build")
        return self._build(self.prepare(plan), Path(out), options if options is not None else self.Options())

    def estimate(self, plan: Plan, options: Any = None) -> Estimate:
        self._require("estimate")
        return self._estimate(self.prepare(plan), options if options is not None else self.Options())

    def runner(self, plan: Plan, threads: int, workdir: str | Path, options: Any = None) -> Runner:
        self._require("runner")
        opts = options if options is not None else self.Options()
        return self._runner(self.prepare(plan), threads, Path(workdir), opts)

    def _require(self, verb: str) -> None:
        if not self.can(verb):
            raise CEPDError(f"target {self.name!r} ({self.kind.value}) cannot {verb}; "
                            f"it can: {', '.join(self.verbs())}")  # fmt: skip

    # -- what subclasses override -----------------------------------------------------------
    def _build(self, plan: Plan, out: Path, options: Any) -> Built:
        raise NotImplementedError

    def _estimate(self, plan: Plan, options: Any) -> Estimate:
        raise NotImplementedError

    def _runner(self, plan: Plan, threads: int, workdir: Path, options: Any) -> Runner:
        raise NotImplementedError
