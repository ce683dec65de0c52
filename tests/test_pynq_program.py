"""PYNQ-Z1 target: the interface tables, grouping, memory layout, program records, rendering."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from cepd_deploy import lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Op
from cepd_deploy.targets.pynq_z1 import isa
from cepd_deploy.targets.pynq_z1.blob import allocate_arena
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.escape import c_string, identifier, md_text, py_string, tcl_string
from cepd_deploy.targets.pynq_z1.groups import Group, partition
from cepd_deploy.targets.pynq_z1.program import compile_program
from cepd_deploy.targets.pynq_z1.render import render_engine
from tests.pynq_helpers import cepd_resnet20

TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh (Tcl interpreter) not installed")


@pytest.fixture(scope="module")
def cepd20():
    return lower(cepd_resnet20(), (1, 3, 32, 32))


def test_register_map_is_well_formed():
    offs = [r.offset for r in isa.REGISTERS]
    assert len(set(offs)) == len(offs) and all(o % 4 == 0 for o in offs)
    args = [r for r in isa.REGISTERS if r.arg]
    assert min(r.offset for r in args) >= 0x20  # Vitis HLS keeps 0x00-0x18 for block control
    for a, b in zip(args, args[1:]):  # 64-bit arguments take 2 words + 1 reserved
        assert b.offset - a.offset >= (12 if a.width_bits == 64 else 8)
    assert set(isa.MAXI) <= {r.arg for r in args} and set(isa.MAXI.values()) == set(isa.HP_PORTS)


def test_record_encoding_roundtrip():
    r = isa.record(isa.Kind.STEP, oh=7, ow=9, e_res=123, e_out_shift=-3)
    assert r["sc_map"] == -1 and r["e_scale"] == -1  # unset addresses mean "none"
    words = isa.encode(isa.Kind.STEP, **{k: v for k, v in r.items() if k != "kind"})
    assert words.shape == (isa.REC_WORDS,) and words.dtype == np.int32
    assert isa.decode(words) == r
    with pytest.raises(KeyError):
        isa.record(isa.Kind.LOAD, nope=1)
    with pytest.raises(CEPDError):
        isa.encode(isa.Kind.LOAD, src=2**33)
    names = [n for n, _ in isa.c_fields()]
    assert len(names) == len(set(names))


def test_rendered_header_and_top_come_from_the_tables(tmp_path):
    render_engine(EngineConfig(), tmp_path, "m", ("a", "b"))
    header = (tmp_path / "src" / "cepd_config.h").read_text()
    top = (tmp_path / "src" / "cepd_top.cpp").read_text()
    for name, index in isa.c_fields():
        assert f"  {name} = {index}," in header
    for r in isa.REGISTERS:
        assert f"#define CEPD_REG_{r.name} 0x{r.offset:02X}" in header
        if r.arg:
            assert f"port={r.arg} offset=0x{r.offset:02X} bundle=control" in top
    for arg, bundle in isa.MAXI.items():
        assert f"port={arg} bundle={bundle} offset=slave" in top


def test_cepd_layers_become_fused_groups(cepd20):
    items = partition(cepd20)
    groups = [it for it in items if isinstance(it, Group)]
    cepd_layers = {n for n, info in cepd20.layers.items() if info.kind == "cepd"}
    fused = {g.name for g in groups if len(g.steps) > 1}
    assert fused == cepd_layers
    covered = (
        [s.node.name for g in groups for s in g.steps]
        + [s.scatter.name for g in groups for s in g.steps if s.scatter]
        + [n.name for n in items if not isinstance(n, Group)]
    )
    dropped = {n.name for n in cepd20.nodes if n.op is Op.MAXPOOL and n.attrs.kernel == (1, 1)}
    assert sorted(covered + sorted(dropped)) == sorted(n.name for n in cepd20.nodes)  # each once
    for g in groups:
        if len(g.steps) > 1:
            assert g.steps[-1].scatter is not None  # the scatter-add is the last step's epilogue
            assert all(s.dst != g.out for s in g.steps[:-1])
    strided = [g for g in groups if g.load_step != (1, 1)]
    assert strided and all(g.steps[0].stride == (1, 1) for g in strided)  # the loader subsamples


def test_arena_never_overlaps_live_values(cepd20):
    items = partition(cepd20)
    arena, words = allocate_arena(cepd20, items)
    sizes = {cepd20.input: 3 * 32 * 32} | {n.output: int(np.prod(n.out_shape[1:])) for n in cepd20.nodes}
    live = {}
    for i, it in enumerate(items):
        outs = [it.out] if isinstance(it, Group) else [it.output]
        ins = ([it.src, it.residual] + list(it.reads)) if isinstance(it, Group) else list(it.inputs)
        for v in outs + [x for x in ins if x]:
            a, b = live.get(v, (i, i))
            live[v] = (min(a, i), max(b, i))
    live[cepd20.input] = (-1, live[cepd20.input][1])
    live[cepd20.output] = (live[cepd20.output][0], len(items))
    vals = sorted(arena)
    for i, u in enumerate(vals):
        assert arena[u] + sizes[u] <= words
        for v in vals[i + 1 :]:
            if live[u][0] <= live[v][1] and live[v][0] <= live[u][1]:
                assert arena[u] + sizes[u] <= arena[v] or arena[v] + sizes[v] <= arena[u], (u, v)


def test_program_records_respect_buffers_and_halves(cepd20):
    cfg = EngineConfig()
    prog = compile_program(cepd20, cfg)
    recs = prog.records
    i = 0
    while i < len(recs):
        r = recs[i]
        if r["kind"] == isa.Kind.BUNDLE:
            loads = recs[i + 1 : i + 1 + r["n_load"]]
            steps = recs[i + 1 + r["n_load"] : i + 1 + r["n_load"] + r["n_comp"]]
            for ld in loads:
                assert ld["half"] == r["parity"]
                assert (
                    ld["dst"]
                    + (ld["channels"] - 1) * ld["dst_cstride"]
                    + (ld["rows"] - 1) * ld["dst_pitch"]
                    + ld["cols"]
                    <= cfg.ibuf_words
                )
            for s in steps:
                if loads and s["src_buf"] == isa.Buf.IBUF:  # never the half being loaded
                    assert s["src_split"] < 0 and s["src_half"] != r["parity"]
                if s["dst_buf"] == isa.Buf.DDR or s["e_res"] >= 0:
                    assert s["oh"] * s["ow"] <= cfg.out_px_max
                if s["dst_buf"] == isa.Buf.SCRATCH:
                    c = s["groups"] * s["cout_g"]
                    end = (
                        s["dst_base"] + (c - 1) * s["dst_cstride"] + (s["oh"] - 1) * s["dst_pitch"] + s["ow"]
                    )
                    assert end <= cfg.scratch_words
                assert s["cin_g"] * s["kh"] * s["kw"] <= cfg.red_max
            assert r["n_load"] <= 2 and r["n_comp"] <= 16
            i += r["n_load"] + r["n_comp"]
        i += 1
    assert recs[-1]["kind"] == isa.Kind.END
    assert {m["node"] for m in prog.meta} <= {n.name for n in cepd20.nodes}


def test_escaping():
    nasty = 'a"b\\c;d[e]{f}$(g)\n\th?? ü'
    lit = c_string(nasty)
    assert lit.startswith('"') and "\n" not in lit and "??" not in lit
    assert eval(py_string(nasty)) == nasty
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", identifier(nasty))
    assert identifier("123") == "m_123" and identifier("") == "model"
    assert "\n" not in md_text(nasty) and "|" not in md_text("a|b").replace("\\|", "")


@needs_tclsh
def test_tcl_string_is_inert_and_roundtrips(tmp_path):
    nasty = 'x"; exec touch PWNED; [exec touch PWNED2] ${HOME} $(id) {a} }\\\nend ü'
    script = tmp_path / "t.tcl"
    script.write_text(f"set v {tcl_string(nasty)}\nputs -nonewline $v\n", encoding="utf-8")
    out = subprocess.run([TCLSH, str(script)], capture_output=True, cwd=tmp_path, check=True)
    assert out.stdout.decode("utf-8") == nasty
    assert not list(tmp_path.glob("PWNED*"))
