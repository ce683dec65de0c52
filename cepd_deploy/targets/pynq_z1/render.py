"""Render the engine sources and the generated project from Jinja2 templates (one per file).

Static files (the engine library, testbench, Tcl flows) are copied from ``hw/pynq_z1``; the
templates only substitute values prepared here, through the escaping filters of escape.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2

from cepd_deploy import __version__, hw
from cepd_deploy.targets.pynq_z1 import isa, vector
from cepd_deploy.targets.pynq_z1.config import PACK_BITS, PACK_SHIFT, PACK_SPAN, EngineConfig, load_board
from cepd_deploy.targets.pynq_z1.escape import (
    c_string,
    identifier,
    md_code,
    md_text,
    py_doc,
    py_string,
    tcl_string,
)
from cepd_deploy.targets.pynq_z1.fixed import POOL_SHIFT
from cepd_deploy.targets.pynq_z1.program import (
    ARENA_RESERVED,
    HEADER_FIELDS,
    HEADER_WORDS,
    MAGIC,
    VERSION,
)

MAX_LOADS, MAX_COMPS = isa.MAX_LOADS, isa.MAX_COMPS
ENGINE_FILES = ("cepd_fixed.h", "cepd_engine.h", "cepd_top.h")  # static, into src/
TB_FILES = ("tb_main.cpp", "cepd_sim.cpp")  # static, into tb/
TCL_FILES = ("run_hls.tcl", "build_bitstream.tcl")  # static, into the project root


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(hw.path("pynq_z1", "templates"))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters.update(
        c_string=c_string,
        tcl_string=tcl_string,
        py_string=py_string,
        py_doc=py_doc,
        md=md_text,
        md_code=md_code,
        ident=identifier,
    )
    return env


def engine_context(cfg: EngineConfig) -> dict:
    """What cepd_config.h and cepd_top.cpp are rendered from."""
    return {
        "version": __version__,
        "cfg": cfg,
        "max_loads": MAX_LOADS,
        "max_comps": MAX_COMPS,
        "pool_shift": POOL_SHIFT,
        "pack_shift": PACK_SHIFT,
        "pack_span": PACK_SPAN,
        "pack_bits": PACK_BITS,
        "act_segs": isa.ACT_SEGS,
        "hs_frac": vector.HS_FRAC,
        "rs_wb": vector.RS_WB,
        "rs_guard": vector.RS_GUARD,
        "ln_zfrac": vector.LN_ZFRAC,
        "rsqrt_bits": vector.RSQRT_BITS,
        "rsqrt_seeds": ", ".join(str(v) for v in vector.RSQRT_TABLE),
        "magic": f"0x{MAGIC:08X}",
        "blob_version": VERSION,
        "header_words": HEADER_WORDS,
        "header_fields": HEADER_FIELDS,
        "arena_reserved": ARENA_RESERVED,
        "rec_words": isa.REC_WORDS,
        "kinds": [(k.name, int(k)) for k in isa.Kind],
        "enums": isa.c_enums(),
        "fields": isa.c_fields(),
        "status": list(isa.STATUS.items()),
        "registers": isa.REGISTERS,
        "arg_registers": [r for r in isa.REGISTERS if r.arg],
        "maxi": list(isa.MAXI.items()),
        "top": isa.TOP,
    }


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def render_engine(cfg: EngineConfig, out: Path, label: str = "engine", ops: tuple[str, ...] = ()) -> None:
    """The C++ of one engine build: ``out/src`` (synthesisable) and ``out/tb`` (testbench,
    simulation library, model_info.h)."""
    env = _env()
    ctx = engine_context(cfg)
    src, tb = out / "src", out / "tb"
    for name in ENGINE_FILES:
        _write(src / name, hw.path("pynq_z1", "engine", name).read_text())
    for name in TB_FILES:
        _write(tb / name, hw.path("pynq_z1", "engine", name).read_text())
    _write(src / "cepd_config.h", env.get_template("cepd_config.h.j2").render(ctx))
    _write(src / "cepd_top.cpp", env.get_template("cepd_top.cpp.j2").render(ctx))
    _write(
        tb / "model_info.h",
        env.get_template("model_info.h.j2").render(ctx | {"label": label, "ops": list(ops)}),
    )


def project_context(
    cfg: EngineConfig, label: str, *, n_golden: int, report: dict, layers: list[dict], csim: dict | None
) -> dict:
    """The template context of the project files: the engine's, plus the label, the board, the
    clock period (ns), the latency report, the per-layer rows, the C-simulation result and the
    register constants the driver needs."""
    board = load_board()
    return engine_context(cfg) | {
        "label": label,
        "name": identifier(f"cepd_{label}"),
        "board": board,
        "clock_period_ns": round(1000.0 / cfg.clock_mhz, 4),
        "n_golden": n_golden,
        "report": report,
        "layers": layers,
        "csim": csim,
        "hp_ports": list(isa.HP_PORTS.items()),
        "ap_start": isa.AP_START,
        "ap_done": isa.AP_DONE,
        "ap_idle": isa.AP_IDLE,
        "status_ok": isa.STATUS["ST_OK"],
    }


def render_project(out: Path, cfg: EngineConfig, ctx: dict, ops: tuple[str, ...]) -> None:
    """Every generated file of the project except the data (blob, golden vectors)."""
    env = _env()
    render_engine(cfg, out, ctx["label"], ops)
    for name in TCL_FILES:
        shutil.copyfile(hw.path("pynq_z1", "tcl", name), out / name)
    for template, name in (
        ("project.tcl.j2", "project.tcl"),
        ("Makefile.j2", "Makefile"),
        ("driver.py.j2", "driver.py"),
    ):
        _write(out / name, env.get_template(template).render(ctx))
    render_readme(out, ctx)


def render_readme(out: Path, ctx: dict) -> None:
    """Write the project's README.md from ``ctx``."""
    _write(out / "README.md", _env().get_template("README.md.j2").render(ctx))
