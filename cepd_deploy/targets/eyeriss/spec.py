"""Accelerator specs: YAML (safe-loaded) -> validated frozen dataclasses. The simulator never sees a dict.

>>> spec = load_spec("eyeriss_v1")          # a preset in hw/eyeriss/, or a path to a .yaml file
>>> spec.array.rows * spec.array.cols
168
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from numpy import maximum as np_max

from cepd_deploy.errors import CEPDError
from cepd_deploy.untrusted import brief, load_yaml

VERSION = 1
#: memory levels, outermost to innermost, in the order a spec must list them
LEVELS = ("dram", "glb", "array", "rf")


@dataclass(frozen=True)
class DramSpec:
    """Off-chip memory: bandwidth (MB/s), ifmap/ofmap compression, overlap with processing and
    energy per access (relative to one MAC)."""

    bandwidth_mb_per_s: float
    compression: str  # "rlc" or "none"
    overlaps_processing: bool  # activations stream in/out while the PEs compute (else they wait)
    access_energy_rel: float


@dataclass(frozen=True)
class GlbSpec:
    """The global buffer: size and usable part (KiB), port widths (words/cycle) and energy per
    access (relative to one MAC)."""

    size_kib: float
    usable_kib: float  # the part that holds ifmaps and psums
    ifmap_read_words_per_cycle: float
    psum_read_words_per_cycle: float
    psum_write_words_per_cycle: float
    access_energy_rel: float


@dataclass(frozen=True)
class ArraySpec:
    """The PE array: rows x cols PEs and the energy of one delivery over the array (relative to one
    MAC)."""

    rows: int
    cols: int
    access_energy_rel: float


@dataclass(frozen=True)
class RfSpec:
    """A PE's scratchpads: filter/ifmap/psum sizes (words), MACs per cycle, whether the filter pad
    is double-buffered and energy per access (relative to one MAC)."""

    filter_size_words: int
    ifmap_size_words: int
    psum_size_words: int
    macs_per_cycle: float
    filter_double_buffered: bool
    access_energy_rel: float


#: mapping quantities a constraint may bound: the mapper's parameters (``mapper.PARAMS``), the
#: output-width tiles, and ``psum_channels`` (q x channel_sets: the input channels a psum
#: accumulates over in the array before it goes back to the GLB)
QUANTITIES = ("set_rows", "strip_cols", "parallel_strips", "filter_sets", "channel_sets", "group_sets",
              "image_sets", "p", "q", "m_tile", "n_tile", "e_tile", "width_tiles",
              "psum_channels")  # fmt: skip
#: conv dimensions a rule's ``when`` may test (``problem.ConvProblem``: per group, h/w padded)
DIMENSIONS = ("n", "g", "c", "m", "h", "w", "r", "s", "e", "f")
MAX_RULES = 64  #: most constraint rules in one spec
MAX_BOUND = 1 << 20  #: largest bound a constraint may give

#: an inclusive range; None = unbounded on that side
Range = tuple[str, int | None, int | None]


@dataclass(frozen=True)
class Constraint:
    """One mapping rule (as Timeloop's constraint files): inclusive bounds on mapping quantities,
    for the convs whose dimensions fall in ``when`` (every conv when empty)."""

    bounds: tuple[Range, ...]
    when: tuple[Range, ...] = ()

    def applies(self, problem) -> bool:
        return all(_within(getattr(problem, d), lo, hi) for d, lo, hi in self.when)


def _within(value: int, low: int | None, high: int | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


@dataclass(frozen=True)
class Spec:
    """One accelerator configuration (see hw/eyeriss/eyeriss_v1.yaml for every field's meaning)."""

    name: str
    clock_mhz: float
    word_bits: int
    mac_energy_rel: float
    zero_gating: bool
    dram: DramSpec
    glb: GlbSpec
    array: ArraySpec
    rf: RfSpec
    source: str = ""
    constraints: tuple[Constraint, ...] = ()  # mapping rules; none: the free search

    @property
    def pes(self) -> int:
        return self.array.rows * self.array.cols

    @property
    def word_bytes(self) -> float:
        return self.word_bits / 8

    @property
    def glb_words(self) -> int:
        """GLB words available to ifmaps and psums."""
        return int(self.glb.usable_kib * 1024 / self.word_bytes)

    @property
    def dram_words_per_cycle(self) -> float:
        return self.dram.bandwidth_mb_per_s * 1e6 / self.word_bytes / (self.clock_mhz * 1e6)

    def transfer_cycles(self, processing, activation_words, filter_words=0.0):
        """Cycles of an op given its processing cycles and its DRAM words (filters are part of
        processing when they stall the PEs; arrays or floats)."""
        dram = (activation_words + filter_words) / self.dram_words_per_cycle
        if self.dram.overlaps_processing:
            return np_max(processing, dram)
        return processing + activation_words / self.dram_words_per_cycle

    @property
    def peak_gmacs(self) -> float:
        return self.pes * self.rf.macs_per_cycle * self.clock_mhz / 1e3


_LEVEL_TYPES = {"dram": DramSpec, "glb": GlbSpec, "array": ArraySpec, "rf": RfSpec}
_TOP = {"version", "name", "description", "clock_mhz", "word_bits", "mac_energy_rel", "zero_gating", "levels",
        "constraints"}  # fmt: skip
_CHOICES = {"compression": ("rlc", "none")}
#: sane ranges (inclusive) of the numbers, far beyond any real accelerator: they keep every
#: figure finite and the mapper's search small (its candidates grow with the array's PEs)
_BOUNDS: dict[str, tuple[float, float]] = {
    "clock_mhz": (1e-3, 1e5),
    "word_bits": (1, 64),
    "bandwidth_mb_per_s": (1e-3, 1e9),
    "size_kib": (1e-3, 1 << 24),
    "usable_kib": (1e-3, 1 << 24),
    "words_per_cycle": (1e-3, 1e6),
    "rows": (1, 256),
    "cols": (1, 256),
    "size_words": (1, 1 << 20),
    "macs_per_cycle": (1e-3, 1e4),
    "energy_rel": (0, 1e9),
}
MAX_NAME = 100  #: longest spec name


def _bounds(key: str) -> tuple[float, float]:
    field = key.rpartition(".")[2]
    for suffix, bounds in _BOUNDS.items():
        if field.endswith(suffix):
            return bounds
    raise KeyError(key)  # every numeric field has a range


def presets() -> list[str]:
    """Names of the specs shipped in hw/eyeriss/."""
    from cepd_deploy import hw

    return sorted(p.stem for p in hw.path("eyeriss").glob("*.yaml"))


def spec_path(spec: str | Path) -> Path:
    """A preset name (``eyeriss_v1``) or a path to a YAML file -> the file."""
    from cepd_deploy import hw

    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise CEPDError(f"spec file not found: {path}")
        return path
    preset = hw.path("eyeriss", f"{spec}.yaml")
    if not preset.is_file():
        names = ", ".join(presets())
        raise CEPDError(f"unknown Eyeriss spec {str(spec)!r}; presets: {names}, or a .yaml path")
    return preset


def load_spec(spec: str | Path | Spec | None = None) -> Spec:
    """Load and validate a spec; ``None`` means the ``eyeriss_v1`` preset."""
    if isinstance(spec, Spec):
        return spec
    path = spec_path(spec or "eyeriss_v1")
    return parse_spec(load_yaml(path, "Eyeriss spec"), source=str(path))


def parse_spec(data: object, source: str = "<spec>") -> Spec:
    """Validate a spec already read from YAML; every error is one line naming the field."""
    where = Path(source).name
    if not isinstance(data, dict):
        raise CEPDError(f"{where}: a spec is a YAML mapping")
    _check_keys(data, _TOP, {"description", "constraints"}, where)
    if type(data["version"]) is not int or data["version"] != VERSION:  # not True, not 1.0
        raise CEPDError(f"{where}: version: expected {VERSION}, got {brief(data['version'])}")
    if not isinstance(data.get("description", ""), str):
        raise CEPDError(f"{where}: description: expected text, got {brief(data['description'])}")
    levels = data["levels"]
    if not isinstance(levels, list) or not all(isinstance(x, dict) for x in levels):
        raise CEPDError(f"{where}: levels: expected a list of mappings")
    names = [x.get("name") for x in levels]
    if tuple(names) != LEVELS:
        raise CEPDError(f"{where}: levels: expected {', '.join(LEVELS)} (outermost first), "
                        f"got {brief(names)}")  # fmt: skip
    parsed = {x["name"]: _level(x, where) for x in levels}
    if parsed["glb"].usable_kib > parsed["glb"].size_kib:
        raise CEPDError(f"{where}: glb.usable_kib: larger than glb.size_kib")
    return Spec(
        name=_text(data["name"], "name", where, MAX_NAME),
        clock_mhz=_number(data["clock_mhz"], "clock_mhz", where),
        word_bits=int(_number(data["word_bits"], "word_bits", where, integer=True)),
        mac_energy_rel=_number(data["mac_energy_rel"], "mac_energy_rel", where),
        zero_gating=_flag(data["zero_gating"], "zero_gating", where),
        source=source,
        constraints=_constraints(data.get("constraints", []), where),
        **parsed,
    )


def _constraints(raw: object, where: str) -> tuple[Constraint, ...]:
    """``constraints:`` a list of rules, each a mapping of quantities to bounds, with an optional
    ``when`` mapping of conv dimensions to bounds. A bound is an integer (a pin) or ``{min, max}``."""
    if not isinstance(raw, list):
        raise CEPDError(f"{where}: constraints: expected a list of rules, got {brief(raw)}")
    if len(raw) > MAX_RULES:
        raise CEPDError(f"{where}: constraints: at most {MAX_RULES} rules, got {len(raw)}")
    rules = []
    for i, rule in enumerate(raw):
        key = f"{where}: constraints[{i}]"
        if not isinstance(rule, dict):
            raise CEPDError(f"{key}: expected a mapping of mapping quantities to bounds, got {brief(rule)}")
        when = rule.get("when", {})
        _known(rule, ("when", *QUANTITIES), key)
        if not isinstance(when, dict):
            raise CEPDError(f"{key}.when: expected a mapping of conv dimensions to bounds, got {brief(when)}")
        _known(when, DIMENSIONS, f"{key}.when")
        bounds = tuple((q, *_range(v, f"{key}.{q}")) for q, v in rule.items() if q != "when")
        if not bounds:
            raise CEPDError(f"{key}: bounds no mapping quantity")
        rules.append(Constraint(bounds, tuple((d, *_range(v, f"{key}.when.{d}")) for d, v in when.items())))
    return tuple(rules)


def _known(data: dict, allowed: tuple[str, ...], key: str) -> None:
    unknown = sorted(set(data) - set(allowed), key=repr)
    if unknown:
        raise CEPDError(f"{key}: unknown key {brief(unknown[0])} (allowed: {', '.join(allowed)})")


def _range(value: object, key: str) -> tuple[int | None, int | None]:
    """An integer (both ends) or ``{min: a, max: b}`` (either may be left out), within 1..MAX_BOUND."""
    if not isinstance(value, dict):
        pin = _bound(value, key)
        return pin, pin
    if not value:
        raise CEPDError(f"{key}: expected min and/or max, got {brief(value)}")
    _known(value, ("min", "max"), key)
    low, high = (None if value.get(k) is None else _bound(value[k], f"{key}.{k}") for k in ("min", "max"))
    if low is None and high is None:
        raise CEPDError(f"{key}: expected min and/or max, got {brief(value)}")
    if low is not None and high is not None and low > high:
        raise CEPDError(f"{key}: min {low} is above max {high}")
    return low, high


def _bound(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CEPDError(f"{key}: expected an integer or {{min, max}}, got {brief(value)}")
    if not 1 <= value <= MAX_BOUND:
        raise CEPDError(f"{key}: must be between 1 and {MAX_BOUND}, got {brief(value)}")
    return value


def _level(raw: dict, where: str):
    name = raw["name"]
    cls = _LEVEL_TYPES[name]
    wanted = {f.name for f in fields(cls)}
    _check_keys({k: v for k, v in raw.items() if k != "name"}, wanted, set(), f"{where}: {name}")
    values = {}
    for f in fields(cls):
        key, value = f"{name}.{f.name}", raw[f.name]
        if f.type == "bool":
            values[f.name] = _flag(value, key, where)
        elif f.type == "str":
            values[f.name] = _text(value, key, where)
            if value not in _CHOICES.get(f.name, (value,)):
                choices = ", ".join(_CHOICES[f.name])
                raise CEPDError(f"{where}: {key}: expected one of {choices}, got {brief(value)}")
        elif f.type == "int":
            values[f.name] = int(_number(value, key, where, integer=True))
        else:
            values[f.name] = _number(value, key, where)
    return cls(**values)


def _check_keys(data: dict, allowed: set, optional: set, where: str) -> None:
    unknown = sorted(set(data) - allowed, key=repr)
    if unknown:
        raise CEPDError(f"{where}: unknown key {brief(unknown[0])} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(allowed - optional - set(data))
    if missing:
        raise CEPDError(f"{where}: missing field {missing[0]!r}")


def _number(value, key: str, where: str, *, integer: bool = False) -> float:
    """A finite number within the field's range (``_BOUNDS``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CEPDError(f"{where}: {key}: expected a number, got {brief(value)}")
    if integer and value != int(value):
        raise CEPDError(f"{where}: {key}: expected an integer, got {brief(value)}")
    low, high = _bounds(key)
    if value < 0 or (value == 0 and low > 0):
        raise CEPDError(f"{where}: {key}: must be {'>= 0' if low == 0 else '> 0'}, got {brief(value)}")
    if not low <= value <= high:
        raise CEPDError(f"{where}: {key}: must be between {low:g} and {high:g}, got {brief(value)}")
    return float(value)


def _flag(value, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise CEPDError(f"{where}: {key}: expected true or false, got {brief(value)}")
    return value


def _text(value, key: str, where: str, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str) or not value:
        raise CEPDError(f"{where}: {key}: expected a non-empty string, got {brief(value)}")
    if len(value) > limit or not value.isprintable():
        raise CEPDError(f"{where}: {key}: expected one line of at most {limit} characters, "
                        f"got {brief(value)}")  # fmt: skip
    return value
