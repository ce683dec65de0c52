"""PYNQ-Z1 target: an HLS overlay engine, its program compiler, C-simulation and latency model.

* ``estimate(plan, config=None) -> Report`` - latency (per op, per layer, total) and resources of
  a Plan (batch 1) on the engine; ``Report.to_json()`` holds ``totals.latency_ms``.
* ``build(model, out, csim=..., bits=..., clock_mhz=...) -> dict`` - a self-contained project
  (engine C++, Tcl, Makefile, driver.py, weight blob, golden vectors, README.md).
* ``TARGET`` - name, kind and the op -> handler table (every Plan op has one).
"""

from __future__ import annotations

from cepd_deploy.targets import TargetInfo
from cepd_deploy.targets.pynq_z1.config import EngineConfig, load_board, make_config
from cepd_deploy.targets.pynq_z1.model import Report, estimate, resources
from cepd_deploy.targets.pynq_z1.program import HANDLERS, UNSUPPORTED
from cepd_deploy.targets.pynq_z1.project import build

TARGET = TargetInfo("pynq-z1", "fpga", HANDLERS, UNSUPPORTED)

__all__ = [
    "TARGET",
    "EngineConfig",
    "Report",
    "build",
    "cli",
    "estimate",
    "load_board",
    "make_config",
    "resources",
]


def cli(args) -> tuple[dict, str, int]:
    """``cepd-deploy build --target pynq-z1``: (the JSON figures, the text summary, exit code)."""
    from cepd_deploy.targets.pynq_z1.summary import text_summary

    shape = tuple(args.input_shape) if getattr(args, "input_shape", None) else None
    result = build(
        args.model,
        args.output,
        input_shape=shape,
        bits=args.bits,
        clock_mhz=args.clock_mhz,
        csim=args.csim,
        calib=args.calib,
        golden=args.golden,
        seed=args.seed,
    )
    code = 1 if result["csim"] is not None and not result["csim"]["bit_exact"] else 0
    return result, text_summary(result, report=args.report), code
