"""The CEPD paper's per-image ResNet-50 latency table, kept here with its source.

Source: "CEPD: Co-Exploring Pruning and Decomposition for Compact DNN Models" (anonymous,
under review), ResNet-50 per-image inference latency table. The paper does not say how the
figures were obtained (clock, PE count, bit width, batch): only the speedups are comparable.
"""

from __future__ import annotations

import re

SOURCE = "CEPD paper, ResNet-50 per-image latency table (PYNQ-Z1 FPGA, Eyeriss ASIC)"

#: the zoo architecture the paper's figures are for (no other model has paper figures)
MODEL = "resnet50"

#: FLOPs remaining -> target -> latency in ms (of :data:`MODEL`).
LATENCY_MS: dict[float, dict[str, float]] = {
    1.0: {"pynq-z1": 172.0, "eyeriss": 38.10},
    0.663: {"pynq-z1": 122.0, "eyeriss": 28.26},
    0.461: {"pynq-z1": 88.21, "eyeriss": 20.88},
    0.371: {"pynq-z1": 67.72, "eyeriss": 15.83},
}

POINTS = (0.663, 0.461, 0.371)


def has_figures(arch: str) -> bool:
    """Whether the paper has latency figures for zoo architecture ``arch``."""
    return arch == MODEL


def display_name(arch: str) -> str:
    """How a paper names a zoo architecture: resnet50 -> ResNet-50 (others as they are)."""
    m = re.fullmatch(r"resnet(\d+)", arch)
    return f"ResNet-{m.group(1)}" if m else arch


def paper_latency(target: str, flops_remaining: float, arch: str = MODEL) -> float | None:
    """The paper's latency for ``arch`` at the nearest of its points (within 0.005), if it has one."""
    if not has_figures(arch):
        return None
    for f, row in LATENCY_MS.items():
        if abs(f - flops_remaining) <= 0.005:
            return row.get(target)
    return None


def paper_speedup(target: str, flops_remaining: float, arch: str = MODEL) -> float | None:
    """The paper's speedup over dense for ``arch`` on ``target`` at ``flops_remaining``, if it has one."""
    lat, base = paper_latency(target, flops_remaining, arch), LATENCY_MS[1.0].get(target)
    return base / lat if lat and base else None
