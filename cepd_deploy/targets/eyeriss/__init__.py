"""Eyeriss: a row-stationary dataflow cost simulator (Chen et al., ISCA 2016 / JSSC 2017).

Every op of a Plan is mapped onto a spec'd Eyeriss-like accelerator (PE array with per-PE
scratchpads, a global buffer, DRAM) by a row-stationary mapping search under the scratchpad and
GLB capacities; the result gives per-op and total cycles, active PEs, access counts per memory
level, DRAM bytes and energy (relative to a MAC). Validated against the chip's measured AlexNet
numbers (see README_SECTION.md).

>>> from cepd_deploy.targets import eyeriss
>>> plan = lower(build_model("alexnet"), (4, 3, 227, 227))               # doctest: +SKIP
>>> result = eyeriss.simulate(plan, eyeriss.load_spec("eyeriss_v1"))     # doctest: +SKIP
>>> result.to_json()["totals"]["latency_ms"]                             # doctest: +SKIP
"""

from __future__ import annotations

from cepd_deploy.targets import TargetInfo
from cepd_deploy.targets.eyeriss.result import LayerResult, SimResult
from cepd_deploy.targets.eyeriss.simulator import DEFAULT_ZEROS, HANDLERS, UNSUPPORTED, simulate
from cepd_deploy.targets.eyeriss.spec import Spec, load_spec, presets

TARGET = TargetInfo("eyeriss", "asic", handlers=HANDLERS, unsupported=UNSUPPORTED)

__all__ = ["DEFAULT_ZEROS", "TARGET", "LayerResult", "SimResult", "Spec", "load_spec", "presets", "simulate"]
