"""The weight blob and the memory layout of a compiled program.

The blob (what the driver loads into DDR) is little-endian int16 words: a header of
``HEADER_WORDS`` (int32 fields), the weight/parameter sections, then the records (int32). The
arena holds every value that lives in DDR: the input, group outputs, vector-op results;
on-chip intermediates of a fused group never reach it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Node, Op, Plan, SliceAttrs
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.fixed import QPlan
from cepd_deploy.targets.pynq_z1.groups import Group
from cepd_deploy.targets.pynq_z1.isa import REC_WORDS, Kind, encode

HEADER_WORDS = 64  # int16 words: 32 int32 fields
HEADER_FIELDS = (
    "magic",
    "version",
    "bits",
    "hw_hash",
    "n_records",
    "prog_off",
    "arena_words",
    "in_off",
    "in_words",
    "in_frac",
    "out_off",
    "out_words",
    "out_frac",
    "blob_words",
    "in_c",
    "in_h",
    "in_w",
)
MAGIC = 0x315A5043  # "CPZ1"
VERSION = 1
#: status words at the start of the arena: word 0 the status, then the records run (32 bits, least
#: significant word first: 2 words, or 4 in the 8-bit engine's arena of bytes)
ARENA_RESERVED = 16
ALIGN = 4  # DDR regions start on 8-byte (one 64-bit beat) boundaries


def align(n: int, a: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``a`` (default: one 64-bit DDR beat, in int16 words)."""
    return (n + a - 1) // a * a


@dataclass
class Wmem:
    """The blob's data sections, allocated on first use (contents optional: sizes suffice for
    the latency model)."""

    q: QPlan | None
    plan: Plan
    offset: int = HEADER_WORDS
    sections: dict[str, tuple[int, np.ndarray | None, int]] = field(default_factory=dict)

    def _add(self, key: str, data: np.ndarray | None, words: int) -> int:
        if key not in self.sections:
            off = align(self.offset)
            self.sections[key] = (off, data, words)
            self.offset = off + words
        return self.sections[key][0]

    def int16(self, name: str) -> int:
        """A quantised const (weights, scales) as int16 words."""
        size = int(self.plan.consts[name].size)
        data = None if self.q is None else self.q.qconsts[name].astype(np.int16).reshape(-1)
        return self._add(name, data, size)

    def int16_transposed(self, name: str) -> int:
        """A 2-D weight matrix (fout, fin), stored transposed (fin, fout) as int16."""
        size = int(self.plan.consts[name].size)
        data = (
            None
            if self.q is None
            else np.ascontiguousarray(self.q.qconsts[name].T).astype(np.int16).reshape(-1)
        )
        return self._add(name + "#T", data, size)

    def int32(self, name: str) -> int:
        """A bias as int32 (two little-endian int16 words each)."""
        size = int(self.plan.consts[name].size)
        data = None if self.q is None else self.q.qconsts[name].astype("<i4").view("<i2").reshape(-1)
        return self._add(name, data, 2 * size)

    def table(self, key: str, values) -> int:
        arr = np.asarray(values, dtype=np.int64)
        if arr.size and (arr.min() < -32768 or arr.max() > 32767):
            raise CEPDError(f"{key}: table entries exceed int16")
        return self._add(key, arr.astype(np.int16), arr.size)


@dataclass
class Program:
    """The compiled program: records (dicts of fields), per-record metadata, memory layout."""

    config: EngineConfig
    records: list[dict]
    meta: list[dict]  # per record: node name, group/tile
    wmem: Wmem
    arena: dict[str, int]
    arena_words: int
    input: str
    output: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    groups: list[dict] = field(default_factory=list)  # tiling decisions, for the listing

    @property
    def in_words(self) -> int:
        return math.prod(self.in_shape[1:])

    @property
    def out_words(self) -> int:
        return math.prod(self.out_shape[1:])

    def encoded(self) -> np.ndarray:
        return np.stack(
            [encode(r["kind"], **{k: v for k, v in r.items() if k != "kind"}) for r in self.records]
        )

    def header(self, q: QPlan) -> dict[str, int]:
        prog_off = align(self.wmem.offset, 2)
        c, h, w = (tuple(self.in_shape[1:]) + (1, 1))[:3]
        return dict(
            magic=MAGIC,
            version=VERSION,
            bits=q.bits,
            hw_hash=self.config.hw_hash,
            n_records=len(self.records),
            prog_off=prog_off,
            arena_words=self.arena_words,
            in_off=self.arena[self.input],
            in_words=self.in_words,
            in_frac=q.input_frac,
            out_off=self.arena[self.output],
            out_words=self.out_words,
            out_frac=q.output_frac,
            blob_words=prog_off + 2 * REC_WORDS * len(self.records),
            in_c=c,
            in_h=h,
            in_w=w,
        )

    def blob(self, q: QPlan) -> bytes:
        """The weight blob: header, data sections, records (little-endian int16 words)."""
        hdr = self.header(q)
        words = np.zeros(hdr["blob_words"], dtype="<i2")
        fields32 = np.zeros(HEADER_WORDS // 2, dtype="<i4")
        fields32[: len(HEADER_FIELDS)] = [hdr[k] for k in HEADER_FIELDS]
        words[:HEADER_WORDS] = fields32.view("<i2")
        for off, data, n in self.wmem.sections.values():
            if data is None:
                raise CEPDError("blob(): the program was compiled without quantised weights")
            words[off : off + n] = data
        words[hdr["prog_off"] :] = self.encoded().astype("<i4").view("<i2").reshape(-1)
        return words.tobytes()

    def listing(self) -> str:
        """One line per record: kind and the node it runs (for the generated project)."""
        lines = []
        for i, (r, m) in enumerate(zip(self.records, self.meta)):
            lines.append(f"{i:5d} {Kind(r['kind']).name:6s} {m['node']!r}")
        return "\n".join(lines) + "\n"


# -- arena ---------------------------------------------------------------------------------------
def views(plan: Plan) -> dict[str, tuple[str, int]]:
    """Values that are views of another value in DDR: a SLICE's channels [start, stop) of a one-image
    value are contiguous inside it. Value -> (the value it lies in, word offset)."""
    out: dict[str, tuple[str, int]] = {}
    for n in plan.nodes:
        if n.op is Op.SLICE:
            assert isinstance(n.attrs, SliceAttrs)
            root, off = out.get(n.inputs[0], (n.inputs[0], 0))
            out[n.output] = (root, off + n.attrs.start * math.prod(n.in_shapes[0][2:]))
    return out


def allocate_arena(plan: Plan, items: list[Group | Node], reuse: bool = True) -> tuple[dict[str, int], int]:
    """First-fit DDR placement of every value that lives in DDR, reusing dead values' space
    (``reuse=False``: every value keeps its own space, so all of them can be inspected). A view
    (:func:`views`) takes no space: it keeps the value it lies in alive while it is read."""
    view = views(plan)
    base = lambda v: view[v][0] if v in view else v  # noqa: E731
    sizes = {plan.input: math.prod(plan.input_shape[1:])}
    born, last = {plan.input: -1}, {plan.input: -1}
    shapes = {n.output: n.out_shape for n in plan.nodes}
    for i, it in enumerate(items):
        if isinstance(it, Group):
            outs = [it.out]
            ins = ([] if it.from_blob else [it.src]) + ([it.residual] if it.residual else []) + list(it.reads)
        elif it.output in view:
            outs, ins = [], []
        else:
            outs, ins = [it.output], list(it.inputs)
        for v in outs:
            sizes[v] = math.prod(shapes[v][1:])
            born[v], last[v] = i, i
        for v in ins:
            last[base(v)] = i
    last[base(plan.output)] = len(items)
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, born, last)
    arena: dict[str, int] = {}
    top = ARENA_RESERVED
    for v in sorted(sizes, key=lambda v: born[v]):
        live = sorted((o, e) for o, e, b, d in placed if not reuse or not (d < born[v] or last[v] < b))
        off = ARENA_RESERVED
        for o, e in live:
            if off + sizes[v] <= o:
                break
            off = max(off, align(e))
        arena[v] = off
        placed.append((off, off + sizes[v], born[v], last[v]))
        top = max(top, off + sizes[v])
    for v, (root, off) in view.items():
        arena[v] = arena[root] + off
    return arena, align(top)
