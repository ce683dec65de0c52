"""The engine's interface, defined once: the AXI-Lite register map and the program records.

Both tables are rendered into the C++ header (``cepd_config.h``: ``#define``s and enums, and
the top function's INTERFACE pragmas in ``cepd_top.cpp``) and into ``driver.py``; nothing
else spells an offset or a field index.

A program is a sequence of fixed-size records of ``REC_WORDS`` int32 words (word 0 = kind):
``BUNDLE`` (n_load, n_comp, parity) is followed by its LOAD records then its STEP records; the
engine runs the loads (DDR -> input buffer half ``parity``) while it computes the steps (from
the other half), so tile t+1 streams in while tile t is computed. A tile too large for one half
uses both (``src_split``: channels below it in half 0, the rest in half 1); its loads and
computes then sit in separate bundles. ``VEC`` records are DDR-to-DDR ops of the vector unit
(element-wise, activations, resampling, layer norm); ``END`` stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from cepd_deploy.errors import CEPDError


@dataclass(frozen=True)
class Register:
    """One AXI-Lite register: name, byte offset, width (bits), what it holds, and the top function
    argument behind it."""

    name: str
    offset: int
    width_bits: int
    doc: str
    arg: str | None = None  # the top function argument behind it (None: HLS block control)


#: The AXI-Lite control registers (Vitis HLS keeps 0x00-0x18 for block control).
REGISTERS: tuple[Register, ...] = (
    Register("CTRL", 0x00, 32, "bit0 ap_start, bit1 ap_done, bit2 ap_idle, bit3 ap_ready"),
    Register("GIE", 0x04, 32, "global interrupt enable"),
    Register("IER", 0x08, 32, "interrupt enable: bit0 ap_done, bit1 ap_ready"),
    Register("ISR", 0x0C, 32, "interrupt status (toggle on write)"),
    Register("WMEM0", 0x20, 64, "physical address of the weight blob, seen through HP0", "wmem0"),
    Register("WMEM1", 0x30, 64, "the same address, seen through HP1", "wmem1"),
    Register("AMEM0", 0x40, 64, "physical address of the activation arena, seen through HP0", "amem0"),
    Register("AMEM1", 0x50, 64, "the same address, seen through HP1", "amem1"),
    Register("MAX_RECORDS", 0x60, 32, "stop after this many records (0 = run to END)", "max_records"),
)
REG = {r.name: r for r in REGISTERS}
#: m_axi pointer argument -> HLS bundle, and bundle -> the Zynq PS port it is wired to. Every
#: buffer is reachable through both ports; the engine stripes its streams over them.
MAXI = {"wmem0": "gmem0", "amem0": "gmem0", "wmem1": "gmem1", "amem1": "gmem1"}
HP_PORTS = {"gmem0": "S_AXI_HP0", "gmem1": "S_AXI_HP1"}
TOP = "cepd_engine"  # the HLS top function, IP and block-design cell name stem
AP_START, AP_DONE, AP_IDLE = 0x1, 0x2, 0x4


class Kind(IntEnum):
    """A program record's kind (word 0 of the record)."""

    END = 0
    BUNDLE = 1
    LOAD = 2
    STEP = 3
    VEC = 4


class StepOp(IntEnum):
    """What a STEP record computes."""

    MAC = 0  # conv / matmul / linear on the PE array
    MAXP = 1  # max pool on the lanes
    AVGP = 2  # average pool (count_include_pad) on the lanes


class VecOp(IntEnum):
    """What a VEC record computes (``map``: an optional channel map)."""

    COPY = 0  # out[c] = epilogue(a[map[c]])  (flatten, permute, relu, affine, concat part)
    ADD2 = 1  # out[c] = epilogue(a[c] + b[map[c]])  (add; scatter-add with map = index or -1)
    GAP = 2  # out[c] = epilogue(mean_p a[c, p])  (global average pool)
    MUL = 3  # out[c] = epilogue(a[c] * b[map[c]])  (b_bcast: one b per channel, squeeze-excitation)
    ACT = 4  # out[c] = epilogue(fn(a[c]))  (ActFn; a table, the hard functions, leaky/prelu slopes)
    RESAMPLE = 5  # zero padding, nearest and bilinear resize: row/column tables, line buffer
    LNORM = 6  # layer norm over channels: per-position statistics, then epilogue(z * scale + shift)


#: An ACT TABLE record's table: ACT_SEGS (value, step) pairs of int16 (see vector.py)
ACT_SEGS = 1024


class ActFn(IntEnum):
    """What a VEC ACT record computes (see vector.py)."""

    TABLE = 0  # sigmoid, tanh, silu, gelu: the node's segment table (value, step), asymptotic tails
    HSIG = 1  # hard sigmoid: clamp(x + 3, 0, 6) / 6 at frac HS_FRAC
    HSWISH = 2  # hard swish: x times that
    LEAKY = 3  # leaky relu / prelu: x, or x * slope (a slope table)


class Buf(IntEnum):
    """Where a STEP reads its source or writes its result."""

    IBUF = 0  # the input tile buffer half of the current tile
    SCRATCH = 1  # on-chip intermediates of a fused group
    DDR = 2  # the activation arena (through the output buffer)


class Act(IntEnum):
    """The epilogue's activation."""

    NONE = 0
    RELU = 1
    RELU6 = 2


REC_WORDS = 64
MAX_LOADS, MAX_COMPS = 2, 16  # records per bundle the engine holds on chip (LOADs, STEPs)
#: The epilogue block, shared by STEP and VEC records, starts at this word.
EPI_BASE = 48
EPI_FIELDS = (
    "e_scale",  # wmem word address of int16 per-channel scales, -1: none
    "e_norm",  # right shift (round) after the scale: keeps the wide value's frac <= 40
    "e_bias",  # wmem word address of int32 per-channel biases (2 words each), -1: none
    "e_bias_shift",  # left shift of the bias to the wide frac
    "e_res",  # arena word address of the residual at the region origin, -1: none
    "e_res_pitch",
    "e_res_cstride",
    "e_res_shift",  # wide frac - residual frac (>= 0: left shift, < 0: round right)
    "e_act",  # Act
    "e_frac",  # frac of the wide value after e_norm (for the relu6 bound)
    "e_out_shift",  # wide frac - output frac (requantise: round half up, saturate)
)
FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.END: (),
    Kind.BUNDLE: ("n_load", "n_comp", "parity"),
    Kind.LOAD: (
        "half",
        "src_mem",
        "src",
        "channels",
        "src_cstride",
        "src_pitch",
        "col_step",
        "rows",
        "cols",
        "dst",
        "dst_pitch",
        "dst_cstride",
    ),
    Kind.STEP: (
        "op",
        "flat",
        "bh",
        "bw",
        "src_buf",
        "src_half",
        "src_split",
        "src_base",
        "src_pitch",
        "src_cstride",
        "src_y0",
        "src_x0",
        "in_h",
        "in_w",
        "oy0",
        "ox0",
        "oh",
        "ow",
        "dst_buf",
        "dst_base",
        "dst_pitch",
        "dst_cstride",
        "groups",
        "cin_g",
        "cout_g",
        "kh",
        "kw",
        "sh",
        "sw",
        "ph",
        "pw",
        "dh",
        "dw",
        "w_addr",
        "w_mem",
        "bias_px",
        "sc_map",
        "sc_base",
        "sc_pitch",
        "sc_cstride",
        "sc_a_norm",  # the last TT step's own epilogue before the scatter-add: round-shift, then
        "sc_a_out",  # requantise to its output format
        "sc_a_shift",
        "sc_b_shift",
        "node",
    ),
    Kind.VEC: (
        "vop",
        "channels",
        "hw",
        "a_addr",
        "a_cstride",
        "a_map",
        "a_shift",
        "b_addr",
        "b_cstride",
        "b_map",
        "b_shift",
        "out_addr",
        "out_cstride",
        "gap_mul",
        "gap_shift",
        "node",
        "b_bcast",  # MUL: b holds one value per channel (broadcast over the image)
        "fn",  # ACT: ActFn
        "p_addr",  # wmem word address of the op's table: ACT segments or slopes, RESAMPLE rows
        "p_step",  # ACT LEAKY: slope table step per channel (0: one slope for all)
        "t_lo",  # ACT TABLE: raw input of the first segment
        "t_shift",  # ACT TABLE: log2 of the segment width (raw units)
        "t_left",  # ACT TABLE: below the table: 0 the constant t_lval, 1 the input requantised
        "t_right",  # ACT TABLE: above the table: 0 the constant t_rval, 1 the input requantised
        "t_lval",
        "t_rval",
        "id_shift",  # ACT TABLE: input frac - output frac (requantising tails)
        "hs_f",  # ACT HSIG/HSWISH: frac of the exact sum x + 3 (max(f_in, 0))
        "hs_ush",  # ACT HSIG/HSWISH: left shift of the input to that frac
        "sl_frac",  # ACT LEAKY: the slopes' frac
        "in_h",  # RESAMPLE: source image
        "in_w",
        "out_h",  # RESAMPLE: output image
        "out_w",
        "x_addr",  # RESAMPLE: wmem word address of the column table
        "rs_direct",  # RESAMPLE: every weight is 0 (padding, nearest): one streaming pass
        "rs_vpass",  # RESAMPLE: vertical passes per channel (for the latency model)
        "rs_rows",  # RESAMPLE: source rows read per channel (for the latency model)
        "ln_tile",  # LNORM: positions per tile (statistics held in the vector buffer)
        "ln_g",  # LNORM: the statistics are scaled by 4**ln_g (headroom for eps)
        "ln_eps_lo",  # LNORM: round(C**2 eps 4**(f_in + ln_g)), low 31 bits
        "ln_eps_hi",  # LNORM: and the bits above them
    ),
}
for _k, _f in FIELDS.items():
    assert 1 + len(_f) <= EPI_BASE and EPI_BASE + len(EPI_FIELDS) <= REC_WORDS, _k
#: -1 means "none" for these address fields
NONE_DEFAULT = {
    "sc_map",
    "a_map",
    "b_map",
    "b_addr",
    "e_scale",
    "e_bias",
    "e_res",
    "src_split",
    "p_addr",
    "x_addr",
}


#: Status codes the engine leaves in arena word 0 (word 1: records executed).
STATUS = {
    "ST_OK": 1,
    "ST_BAD_MAGIC": -1,
    "ST_BAD_VERSION": -2,
    "ST_BAD_BITS": -3,
    "ST_BAD_HASH": -4,
    "ST_BAD_RECORD": -5,
    "ST_HAZARD": -6,
    "ST_TOO_BIG": -7,
}
#: C++ name prefix of each kind's fields (the shared epilogue fields are F_E_*)
PREFIX = {Kind.BUNDLE: "B_", Kind.LOAD: "L_", Kind.STEP: "S_", Kind.VEC: "V_"}


def c_fields() -> list[tuple[str, int]]:
    """(C++ enum name, word index) of every record field, for cepd_config.h."""
    out = [
        (PREFIX[k] + n.upper(), 1 + i)
        for k, names_ in FIELDS.items()
        if k in PREFIX
        for i, n in enumerate(names_)
    ]
    return out + [("F_" + n.upper(), EPI_BASE + i) for i, n in enumerate(EPI_FIELDS)]


def c_enums() -> list[tuple[str, int]]:
    """Opcode and mode values, for cepd_config.h."""
    groups = ((StepOp, "OP_"), (VecOp, "VOP_"), (Buf, "BUF_"), (Act, "ACT_"), (ActFn, "FN_"))
    return [(p + m.name, int(m.value)) for e, p in groups for m in e]


def index(kind: Kind, name: str) -> int:
    """Word index of field ``name`` in a record of ``kind``."""
    if name in EPI_FIELDS and kind in (Kind.STEP, Kind.VEC):
        return EPI_BASE + EPI_FIELDS.index(name)
    try:
        return 1 + FIELDS[kind].index(name)
    except ValueError:
        raise KeyError(f"{kind.name} has no field {name!r}") from None


def names(kind: Kind) -> tuple[str, ...]:
    """Every field of a ``kind`` record in word order (STEP and VEC: the epilogue fields last)."""
    return FIELDS[kind] + (EPI_FIELDS if kind in (Kind.STEP, Kind.VEC) else ())


def record(kind: Kind, **values: int) -> dict:
    """A record as a dict with every field (address fields default to -1, others to 0)."""
    r = {"kind": kind}
    r.update({n: (-1 if n in NONE_DEFAULT else 0) for n in names(kind)})
    for k, v in values.items():
        if k not in r:
            raise KeyError(f"{kind.name} has no field {k!r}")
        r[k] = v
    return r


def encode(kind: Kind, **values: int) -> np.ndarray:
    """One record as ``REC_WORDS`` int32 words; unset address fields are -1, others 0."""
    rec = np.zeros(REC_WORDS, dtype=np.int64)
    rec[0] = int(kind)
    for name in names(kind):
        if name in NONE_DEFAULT:
            rec[index(kind, name)] = -1
    for name, v in values.items():
        if not name.startswith("_"):
            rec[index(kind, name)] = int(v)
    if rec.min() < -(2**31) or rec.max() >= 2**31:
        raise CEPDError(f"{kind.name} record field out of int32 range: {values}")
    return rec.astype(np.int32)


def decode(rec: np.ndarray) -> dict[str, int]:
    """The named fields of a record (for listings and the latency model)."""
    kind = Kind(int(rec[0]))
    out = {"kind": kind}
    out.update({n: int(rec[index(kind, n)]) for n in names(kind)})
    return out
