"""Eyeriss: a row-stationary dataflow cost simulator (Chen et al., ISCA 2016 / JSSC 2017).

Every op of a Plan is mapped onto a spec'd Eyeriss-like accelerator (PE array with per-PE
scratchpads, a global buffer, DRAM) by a row-stationary mapping search under the scratchpad and
GLB capacities; the result gives per-op and total cycles, active PEs, access counts per memory
level, DRAM bytes and energy (relative to a MAC). Validated against the chip's measured AlexNet
numbers (docs/eyeriss.md; the figures are in tests/data/).

The target is :class:`~cepd_deploy.targets.eyeriss.target.Eyeriss`; the functions below are
imported on first use (this package imports nothing heavy, so the registry can list it).

>>> from cepd_deploy.targets import eyeriss
>>> plan = lower(build_model("alexnet"), (4, 3, 227, 227))               # doctest: +SKIP
>>> result = eyeriss.simulate(plan, eyeriss.load_spec("eyeriss_v1"))     # doctest: +SKIP
>>> result.to_json()["totals"]["latency_ms"]                             # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cepd_deploy import lazy

if TYPE_CHECKING:
    from cepd_deploy.targets.eyeriss.result import LayerResult, SimResult
    from cepd_deploy.targets.eyeriss.schedule import DEFAULT_ZEROS
    from cepd_deploy.targets.eyeriss.simulator import simulate
    from cepd_deploy.targets.eyeriss.spec import Spec, load_spec, presets
    from cepd_deploy.targets.eyeriss.target import Eyeriss

#: public name -> the module that defines it
_LAZY = {
    "DEFAULT_ZEROS": "schedule",
    "Eyeriss": "target",
    "LayerResult": "result",
    "SimResult": "result",
    "Spec": "spec",
    "load_spec": "spec",
    "presets": "spec",
    "simulate": "simulator",
}


__getattr__, __dir__ = lazy.attach(__name__, _LAZY)


__all__ = ["DEFAULT_ZEROS", "Eyeriss", "LayerResult", "SimResult", "Spec", "load_spec", "presets", "simulate"]
