"""The PYNQ-Z1 Target: a Plan as an HLS overlay project (``build``) and its modelled latency on
that engine (``estimate``).

Light on purpose: the compiler, the fixed-point reference, torch and the templates are imported
by the verbs.

>>> built = PynqZ1().build(plan, "out/", PynqZ1.Options(csim=True, label="resnet20"))  # doctest: +SKIP
>>> built.ok, built.figures["csim"]["bit_exact"]                                      # doctest: +SKIP
(True, True)
>>> PynqZ1().estimate(plan).latency_ms                                                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op, Plan
from cepd_deploy.targets.base import Built, Estimate, Kind, Target, option

#: what ``Built.problem`` says when the C-simulation differs from the fixed-point reference
CSIM_MISMATCH = "the C-simulation does not match the fixed-point reference"


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PynqZ1Options:
    """The engine build and the project's sample images."""

    bits: int = option(
        16,
        "fixed-point width of data and weights, 4 to 16 (8 or fewer: the 8-bit engine, two MACs per DSP48E1)",
    )
    clock_mhz: float = option(100.0, "PL clock in MHz", metavar="MHZ")
    csim: bool = option(False, "compile and run the C-simulation on the golden images")
    calib: int = option(8, "calibration samples")
    golden: int = option(4, "golden images for csim and the driver")
    seed: int = option(0, "seed of the sample images")
    report: bool = option(False, "print the per-layer latency estimate")
    label: str | None = option(None, "the model's name in the generated files (default: the model's)")

    def __post_init__(self) -> None:
        if not _whole(self.bits) or not 4 <= self.bits <= 16:
            raise CEPDError(f"--bits must be between 4 and 16 (48-bit accumulators), got {self.bits!r}")
        c = self.clock_mhz
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < float("inf"):
            raise CEPDError(f"--clock-mhz must be a positive number of MHz, got {c!r}")
        for name in ("calib", "golden"):
            if not _whole(getattr(self, name)) or getattr(self, name) < 1:
                raise CEPDError(f"--{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        if not _whole(self.seed) or self.seed < 0:
            raise CEPDError(f"--seed must be a whole number >= 0, got {self.seed!r}")
        for name in ("csim", "report"):
            if not isinstance(getattr(self, name), bool):
                raise CEPDError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.label is not None and not isinstance(self.label, str):
            raise CEPDError(f"label must be text, got {self.label!r}")


class PynqZ1(Target):
    """The Plan compiled into the program of one fixed HLS engine (a CEPD layer is one tiled
    group on the PE array), with its weight blob, driver and Vivado project; fixed-point,
    C-simulated bit-exact against the fixed-point reference."""

    name = "pynq-z1"
    kind = Kind.MODEL
    summary = "PYNQ-Z1 FPGA: an HLS overlay project (C-simulated) and its modelled latency and resources"
    Options = PynqZ1Options
    ops = frozenset(Op)
    passes = ()

    def _build(self, plan: Plan, out: Path, options: PynqZ1Options) -> Built:
        """The project for one image of the Plan's batch (the engine runs one per call)."""
        from cepd_deploy.targets.pynq_z1.model import one_image
        from cepd_deploy.targets.pynq_z1.project import build
        from cepd_deploy.targets.pynq_z1.summary import text_summary

        result = build(
            one_image(plan),
            out,
            label=options.label or "plan",
            bits=options.bits,
            clock_mhz=options.clock_mhz,
            csim=options.csim,
            calib=options.calib,
            golden=options.golden,
            seed=options.seed,
        )
        ok = result["csim"] is None or bool(result["csim"]["bit_exact"])
        text = text_summary(result, report=options.report)
        return Built(result, text, ok, "" if ok else CSIM_MISMATCH)

    def _estimate(self, plan: Plan, options: PynqZ1Options) -> Estimate:
        """One image's modelled latency (the engine runs one per call) times the Plan's batch."""
        from cepd_deploy.targets.pynq_z1.model import estimate, one_image
        from cepd_deploy.targets.pynq_z1.summary import estimate_text

        batch = plan.input_shape[0]
        report = estimate(one_image(plan), {"bits": options.bits, "clock_mhz": options.clock_mhz})
        figures = report.to_json()
        return Estimate(batch * report.latency_ms, figures, estimate_text(figures, batch))
