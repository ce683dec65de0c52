"""PYNQ-Z1 target: an HLS overlay engine, its program compiler, C-simulation and latency model.

The target is :class:`~cepd_deploy.targets.pynq_z1.target.PynqZ1` (``build`` and ``estimate``
through :mod:`cepd_deploy.targets`); the functions below are imported on first use (this package
imports nothing heavy, so the registry can list it).

* ``estimate(plan, config=None) -> Report`` - latency (per op, per layer, total) and resources of
  a Plan (batch 1) on the engine; ``Report.to_json()`` holds ``totals.latency_ms``.
* ``build(plan, out, label=..., csim=..., bits=..., clock_mhz=...) -> dict`` - a self-contained
  project (engine C++, Tcl, Makefile, driver.py, weight blob, golden vectors, README.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cepd_deploy import lazy

if TYPE_CHECKING:
    from cepd_deploy.targets.pynq_z1.config import EngineConfig, load_board, make_config
    from cepd_deploy.targets.pynq_z1.model import Report, estimate, resources
    from cepd_deploy.targets.pynq_z1.project import build
    from cepd_deploy.targets.pynq_z1.target import PynqZ1

#: public name -> the module that defines it
_LAZY = {
    "EngineConfig": "config",
    "PynqZ1": "target",
    "Report": "model",
    "build": "project",
    "estimate": "model",
    "load_board": "config",
    "make_config": "config",
    "resources": "model",
}


__getattr__, __dir__ = lazy.attach(__name__, _LAZY)


__all__ = ["EngineConfig", "PynqZ1", "Report", "build", "estimate", "load_board", "make_config", "resources"]
