"""What the simulator reports: one :class:`LayerResult` per Plan op and their totals."""

from __future__ import annotations

from dataclasses import dataclass, field

from cepd_deploy.targets.eyeriss.spec import Spec

#: access-count and energy levels, outermost first (``mac`` is the arithmetic itself)
LEVELS = ("dram", "glb", "array", "rf")
ENERGY_LEVELS = ("dram", "glb", "array", "rf", "mac")


@dataclass
class LayerResult:
    """The modelled cost of one Plan op. Access counts are in words; energy is relative to a MAC."""

    name: str
    layer: str  # the source layer (several ops share a CEPD layer)
    kind: str  # conv, conv1x1, fc, pool, eltwise, scatter, permute, view, copy, resize, norm
    op: str
    macs: int
    cycles: float  # processing, or DRAM transfer when that takes longer
    processing_cycles: float  # the chip's "processing latency": PE array, GLB ports, filter loads
    active_pes: int
    dram_bytes: float
    accesses: dict[str, float]
    energy_by_level: dict[str, float]
    mapping: dict | None = None
    clock_mhz: float = 200.0
    pes: int = 168
    extra: dict = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return self.cycles / (self.clock_mhz * 1e3)

    @property
    def processing_ms(self) -> float:
        return self.processing_cycles / (self.clock_mhz * 1e3)

    @property
    def energy(self) -> float:
        return sum(self.energy_by_level.values())

    @property
    def utilisation(self) -> float:
        """MACs over the array's MAC slots during the op."""
        return self.macs / (self.cycles * self.pes) if self.cycles else 0.0

    def to_json(self) -> dict:
        return {
            "name": self.name, "layer": self.layer, "kind": self.kind, "op": self.op, "macs": self.macs,
            "cycles": round(self.cycles), "processing_cycles": round(self.processing_cycles),
            "latency_ms": self.latency_ms, "processing_ms": self.processing_ms,
            "active_pes": self.active_pes, "utilisation": self.utilisation,
            "dram_bytes": round(self.dram_bytes), "accesses": {k: round(v) for k, v in self.accesses.items()},
            "energy": self.energy, "energy_by_level": dict(self.energy_by_level),
            "mapping": self.mapping, **self.extra,
        }  # fmt: skip


@dataclass
class SimResult:
    """A whole Plan on one spec. ``to_json()`` gives ``layers`` and ``totals``."""

    spec: Spec
    batch: int
    objective: str
    layers: list[LayerResult]

    def layer(self, name: str) -> LayerResult:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def totals(self) -> dict:
        rows = self.layers
        cycles = sum(r.cycles for r in rows)
        busy = [r for r in rows if r.macs]
        busy_cycles = sum(r.cycles for r in busy)
        macs = sum(r.macs for r in rows)
        clock = self.spec.clock_mhz * 1e3
        return {
            "latency_ms": cycles / clock,
            "latency_ms_per_image": cycles / clock / self.batch,
            "processing_ms": sum(r.processing_cycles for r in rows) / clock,
            "cycles": round(cycles),
            "macs": macs,
            "energy": sum(r.energy for r in rows),
            "energy_by_level": {k: sum(r.energy_by_level[k] for r in rows) for k in ENERGY_LEVELS},
            "dram_bytes": round(sum(r.dram_bytes for r in rows)),
            "accesses": {k: round(sum(r.accesses[k] for r in rows)) for k in LEVELS},
            "active_pes": sum(r.active_pes * r.cycles for r in busy) / busy_cycles if busy_cycles else 0.0,
            "utilisation": macs / (cycles * self.spec.pes) if cycles else 0.0,
            "ops": len(rows),
        }

    def to_json(self) -> dict:
        return {
            "target": "eyeriss",
            "spec": self.spec.name,
            "clock_mhz": self.spec.clock_mhz,
            "pes": self.spec.pes,
            "batch": self.batch,
            "objective": self.objective,
            "layers": [r.to_json() for r in self.layers],
            "totals": self.totals,
        }
