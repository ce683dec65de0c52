"""The CEPD paper's per-image ResNet-50 latency table, kept here with its source.

Source: "CEPD: Co-Exploring Pruning and Decomposition for Compact DNN Models" (anonymous,
under review), ResNet-50 per-image inference latency table. The paper does not say how the
figures were obtained (clock, PE count, bit width, batch): only the speedups are comparable.
"""

from __future__ import annotations

SOURCE = "CEPD paper, ResNet-50 per-image latency table (PYNQ-Z1 FPGA, Eyeriss ASIC)"

#: FLOPs remaining -> target -> latency in ms.
LATENCY_MS: dict[float, dict[str, float]] = {
    1.0: {"pynq-z1": 172.0, "eyeriss": 38.10},
    0.663: {"pynq-z1": 122.0, "eyeriss": 28.26},
    0.461: {"pynq-z1": 88.21, "eyeriss": 20.88},
    0.371: {"pynq-z1": 67.72, "eyeriss": 15.83},
}

POINTS = (0.663, 0.461, 0.371)


def paper_latency(target: str, flops_remaining: float) -> float | None:
    """The paper's latency at the nearest of its points (within 0.005), if it has one."""
    for f, row in LATENCY_MS.items():
        if abs(f - flops_remaining) <= 0.005:
            return row.get(target)
    return None


def paper_speedup(target: str, flops_remaining: float) -> float | None:
    lat, base = paper_latency(target, flops_remaining), LATENCY_MS[1.0].get(target)
    return base / lat if lat and base else None
