"""The board (loaded from ``hw/pynq_z1/board.yaml``) and the engine configuration.

The engine is one fixed overlay: ``pe_out`` output channels x ``block``^2 output pixels of
MACs per cycle, fed from on-chip buffers whose sizes are fields here. Everything the latency
and resource model, the compiler and the rendered C++ header need comes from these two
frozen dataclasses.

At ``bits`` <= 8 the engine packs two output channels into each DSP48E1 (:data:`PACK_SHIFT`): the
8-bit engine computes 8 output channels x 49 pixels = 392 MACs per cycle on the same 196 DSPs, and
its buffers (defaults in :data:`PACKED_DEFAULTS`) hold twice the words in the same block RAMs.

>>> cfg = EngineConfig()            # 16-bit, 100 MHz, 4 x 7x7 = 196 MACs per cycle
>>> cfg.lanes, cfg.macs_per_cycle, cfg.dsp_macs
(49, 196, 196)
>>> cfg8 = EngineConfig(bits=8)     # 8-bit: 8 x 7x7 = 392 MACs per cycle on 196 DSPs
>>> cfg8.pack, cfg8.macs_per_cycle, cfg8.dsp_macs
(2, 392, 196)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from functools import cache

from cepd_deploy.errors import CEPDError
from cepd_deploy.untrusted import brief, load_yaml


@dataclass(frozen=True)
class Resources:
    """Programmable-logic resources: DSP slices, 36 Kb block RAMs, LUTs and flip-flops."""

    dsp: int
    bram36: float
    lut: int
    ff: int


@dataclass(frozen=True)
class HPPort:
    """One AXI high-performance port (per direction): width (bits), sustained fraction of width x
    clock, first-data latency (cycles), burst limit (beats) and per-burst overhead (cycles)."""

    width_bits: int
    efficiency: float
    read_latency_cycles: int
    burst_max_beats: int
    burst_gap_cycles: int


@dataclass(frozen=True)
class Board:
    """The board spec (``hw/pynq_z1/board.yaml``): part, PL resources, DDR peak (MB/s) and sustained
    fraction, the HP port, default and highest clock (MHz)."""

    name: str
    part: str
    board_part: str
    resources: Resources
    ddr_peak_mb_s: float
    ddr_efficiency: float
    hp_port: HPPort
    default_mhz: float
    max_mhz: float


_BOARD_KEYS = {"version", "name", "part", "board_part", "resources", "ddr", "hp_port", "clock"}


def _section(d: dict, key: str, names: set[str]) -> dict:
    sec = d.get(key)
    if not isinstance(sec, dict) or set(sec) != names:
        raise CEPDError(f"board spec: section {key!r} must have exactly {sorted(names)}")
    for name, value in sec.items():  # counts, rates and fractions: finite and positive
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e12:
            raise CEPDError(f"board spec: {key}.{name}: expected a positive number, got {brief(value)}")
    return sec


@cache
def load_board(name: str = "pynq-z1") -> Board:
    """Load and validate the shipped board spec (unknown or missing keys are errors)."""
    from cepd_deploy import hw

    path = hw.path("pynq_z1", "board.yaml")
    data = load_yaml(path, "board spec")
    if not isinstance(data, dict) or set(data) != _BOARD_KEYS or type(data["version"]) is not int \
            or data["version"] != 1:  # fmt: skip
        raise CEPDError(f"{path}: expected version 1 and keys {sorted(_BOARD_KEYS)}")
    if data["name"] != name:
        raise CEPDError(f"{path}: describes {brief(data['name'])}, not {name!r}")
    for key in ("part", "board_part"):
        if not isinstance(data[key], str) or not data[key].isprintable() or len(data[key]) > 100:
            raise CEPDError(f"{path}: {key}: expected one line of text, got {brief(data[key])}")
    res = _section(data, "resources", {f.name for f in fields(Resources)})
    ddr = _section(data, "ddr", {"peak_mb_s", "efficiency"})
    hp = _section(data, "hp_port", {f.name for f in fields(HPPort)})
    clk = _section(data, "clock", {"default_mhz", "max_mhz"})
    return Board(
        data["name"],
        data["part"],
        data["board_part"],
        Resources(**res),
        float(ddr["peak_mb_s"]),
        float(ddr["efficiency"]),
        HPPort(**hp),
        float(clk["default_mhz"]),
        float(clk["max_mhz"]),
    )


#: The packed MAC of the 8-bit engine: one DSP48E1 multiplies A = w_hi * 2**PACK_SHIFT + w_lo (its
#: 25-bit pre-adder sum) by B = x (18-bit port), so P accumulates w_hi x and w_lo x in two fields;
#: every PACK_SPAN products the fabric splits P (low = sign-extended P[16:0], high = (P - low) >> 17)
#: into two accumulators. Exact while |w| <= 127 and |x| <= 128: 4 x 127 x 128 < 2**16.
PACK_SHIFT = 17
PACK_SPAN = 4
PACK_BITS = 8  # the widest data the packing holds
#: The engine's defaults above 8 bits: 4 output channels per chunk; buffers of 16-bit words
UNPACKED_DEFAULTS = {
    "pe_out": 4,
    "ibuf_words": 50176,
    "scratch_words": 50176,
    "wbuf_words": 36864,
    "obuf_words": 8192,
    "rbuf_words": 8192,
}
#: The 8-bit engine's defaults (bits <= PACK_BITS): twice the output channels per chunk, and every
#: buffer twice the words (8-bit words fill the same block RAMs: 2048 x 9 instead of 1024 x 18)
PACKED_DEFAULTS = {
    "pe_out": 8,
    "ibuf_words": 100352,
    "scratch_words": 100352,
    "wbuf_words": 73728,
    "obuf_words": 16384,
    "rbuf_words": 16384,
}

#: fields that only the latency model uses (they do not change the synthesised engine)
MODEL_ONLY = frozenset({"clock_mhz", "pipeline_depth", "bundle_overhead_cycles"})


@dataclass(frozen=True)
class EngineConfig:
    """One engine build. Buffer sizes are in words of ``bits``; ``*_words`` of ping-pong buffers are
    per half. Fields left None take their defaults for ``bits`` (:data:`PACKED_DEFAULTS` at 8 bits
    or fewer)."""

    bits: int = 16  # activation and weight width (ap_int<bits>); accumulators are 48-bit
    clock_mhz: float = 100.0
    pe_out: int = None  # type: ignore[assignment]  # output channels computed in parallel (4; 8 packed)
    block: int = 7  # output pixels in parallel: a block x block tile (or block^2 in a row)
    epi_lanes: int = 14  # epilogue (shift-round-saturate) lanes
    scale_lanes: int = 7  # epilogue lanes with a multiplier (unfolded BN scale, avg-pool)
    vec_lanes: int = 4  # elements per cycle of the DDR-to-DDR vector unit (one 64-bit beat)
    ibuf_words: int = None  # type: ignore[assignment]  # input tile buffer, per half: 49 banks x 1024
    scratch_words: int = None  # type: ignore[assignment]  # a fused CEPD layer's intermediates: 49 x 1024
    wbuf_words: int = None  # type: ignore[assignment]  # streamed weights, per half: pe_out x 9216
    obuf_words: int = None  # type: ignore[assignment]  # outputs to DDR, per half: pe_out x 2048 pixels
    rbuf_words: int = None  # type: ignore[assignment]  # residual prefetch, per half
    vbuf_words: int = 2048  # the vector unit's buffer (48-bit words): resample lines, layer-norm statistics
    pipeline_depth: int = 12  # cycles to fill the MAC pipeline once per output-channel chunk
    bundle_overhead_cycles: int = 32  # decode of a bundle's records, start/finish handshakes of the units

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 4 <= self.bits <= 16:
            raise CEPDError(f"--bits must be between 4 and 16 (48-bit accumulators), got {self.bits}")
        defaults = PACKED_DEFAULTS if self.bits <= PACK_BITS else UNPACKED_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if not 0 < self.clock_mhz:
            raise CEPDError(f"clock must be positive, got {self.clock_mhz} MHz")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("bits", "clock_mhz") and (not isinstance(v, int) or v < 1):
                raise CEPDError(f"engine config {f.name} must be a positive integer, got {v!r}")
        if self.wbuf_words % self.pe_out or self.obuf_words % self.pe_out:
            raise CEPDError("wbuf_words and obuf_words must be multiples of pe_out")
        if self.pe_out % self.pack:
            raise CEPDError(
                f"the {self.bits}-bit engine packs two output channels per DSP: pe_out must be even, "
                f"got {self.pe_out}"
            )

    @property
    def pack(self) -> int:
        """Output channels per DSP48E1: 2 at ``bits`` <= 8 (the packed MAC), else 1."""
        return 2 if self.bits <= PACK_BITS else 1

    @property
    def amem_bytes(self) -> int:
        """Bytes of one value of the activation arena in DDR: 1 in the 8-bit engine, else 2 (the
        weight blob is 16-bit words in both)."""
        return 1 if self.pack == 2 else 2

    @property
    def dsp_macs(self) -> int:
        """DSP48E1s of the PE array."""
        return self.macs_per_cycle // self.pack

    @property
    def lanes(self) -> int:
        return self.block * self.block

    @property
    def macs_per_cycle(self) -> int:
        return self.pe_out * self.lanes

    @property
    def red_max(self) -> int:
        """Longest reduction (cin/groups x kh x kw) one output-channel chunk may have."""
        return self.wbuf_words // self.pe_out

    @property
    def out_px_max(self) -> int:
        """Most output pixels of one DDR-bound step tile (per channel)."""
        return self.obuf_words // self.pe_out

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hw_hash(self) -> int:
        """31-bit hash of everything that changes the synthesised engine (not the clock or the
        latency model's constants); a blob records it and the engine checks it."""
        d = {k: v for k, v in asdict(self).items() if k not in MODEL_ONLY}
        return int(hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def make_config(config: EngineConfig | dict | None = None, **overrides) -> EngineConfig:
    """An EngineConfig from None (defaults), a dict or a config, with keyword overrides."""
    if isinstance(config, EngineConfig):
        base = asdict(config)
    elif config is None:
        base = {}
    elif isinstance(config, dict):
        unknown = set(config) - {f.name for f in fields(EngineConfig)}
        if unknown:
            raise CEPDError(f"unknown engine config keys: {sorted(unknown)}")
        base = dict(config)
    else:
        raise CEPDError(f"engine config must be a dict or EngineConfig, not {type(config).__name__}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = EngineConfig(**base)
    board = load_board()
    if cfg.clock_mhz > board.max_mhz:
        raise CEPDError(
            f"clock {cfg.clock_mhz:g} MHz is above what this model accepts for the "
            f"XC7Z020 ({board.max_mhz:g} MHz)"
        )
    return cfg
