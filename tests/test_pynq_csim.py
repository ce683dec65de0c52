"""PYNQ-Z1 target: C-simulation (g++ + hls4ml's ap_types), generated project, driver, injection.

The engine is compiled once per session (a cache in a temporary folder); each project build
then only links a small testbench.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from cepd_deploy import build_model, convert, lower
from cepd_deploy.cli import main
from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.load import load_plan
from cepd_deploy.plan.ir import Op, Plan
from cepd_deploy.targets.pynq_z1 import csim, fixed, fxp, isa
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.program import compile_program
from cepd_deploy.targets.pynq_z1.project import build
from tests.conftest import randomize_bn
from tests.pynq_helpers import cepd_resnet20, engine_cache  # noqa: F401 (autouse fixture)

CXX = shutil.which("g++")
TCLSH = shutil.which("tclsh")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CXX is None, reason="g++ (C++ compiler for the C-simulation) not installed"),
    pytest.mark.skipif(
        importlib.util.find_spec("hls4ml") is None, reason="hls4ml (ap_types headers) not installed"
    ),
]


@pytest.fixture(scope="module")
def sim():
    return csim.build_sim(EngineConfig())


@pytest.fixture(scope="module")
def cepd_project(tmp_path_factory):
    out = tmp_path_factory.mktemp("proj") / "cepd20"
    plan = load_plan(cepd_resnet20(), (3, 32, 32)).plan
    result = build(plan, out, csim=True, golden=3, label="cepd-resnet20")
    return out, result


def test_csim_is_bit_exact_on_cepd_resnet20(cepd_project):
    out, r = cepd_project
    c = r["csim"]
    assert c["bit_exact"] and c["mismatches"] == 0 and c["images"] == 3
    assert c["within_tolerance"] and c["max_abs_err_vs_float"] <= c["tolerance"]
    assert 0 <= c["top1_agreement"] <= 1
    assert json.loads((out / "report.json").read_text())["csim"]["bit_exact"] is True
    assert "bit-exact with the fixed-point reference: **True**" in (out / "README.md").read_text()
    assert any(t["steps"] > 1 for t in r["tiling"])  # fused CEPD layers really ran


def test_make_csim_in_the_generated_project(cepd_project):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    out, _ = cepd_project
    run = subprocess.run(
        ["make", "csim", f"PYTHON={sys.executable}"], cwd=out, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "bit-exact with the golden outputs" in run.stdout


def test_cli_dense_resnet20_json(tmp_path, capsys):
    code = main(["build", "resnet20", "--target", "pynq-z1", "-o", str(tmp_path / "p"), "--csim", "--json",
                 "--golden", "2"])  # fmt: skip
    assert code == 0
    j = json.loads(capsys.readouterr().out)
    assert j["csim"]["bit_exact"] is True and j["csim"]["max_abs_err_vs_float"] >= 0
    assert set(j["resources"]) >= {"dsp", "bram36", "lut", "ff"} and j["totals"]["latency_ms"] > 0
    assert (tmp_path / "p" / "data" / "weights.bin").is_file()


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert main(["build", "resnet20", "--target", "nope", "-o", str(tmp_path / "a")]) == 2
    assert main(["build", "resnet20", "--target", "pynq-z1", "-o", str(tmp_path / "b"), "--bits", "40"]) == 2
    assert not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("not a project")
    assert main(["build", "resnet20", "--target", "pynq-z1", "-o", str(tmp_path / "c")]) == 2
    assert (tmp_path / "c" / "mine.txt").exists()
    assert "error" in capsys.readouterr().err


def _run_tb(sim, tmp_path, prog, q, images_q):
    blob = tmp_path / "w.bin"
    blob.write_bytes(prog.blob(q))
    from cepd_deploy.targets.pynq_z1.render import render_engine

    render_engine(EngineConfig(), tmp_path / "e")
    tb = csim.build_testbench(sim, tmp_path / "e" / "tb", tmp_path / "tb")
    images_q.astype("<i2").tofile(tmp_path / "in.bin")
    arena = tmp_path / "arena.bin"
    subprocess.run([str(tb), str(blob), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), "1", str(arena)],
                   check=True, capture_output=True)  # fmt: skip
    return np.fromfile(arena, dtype="<i2")


def test_every_ddr_value_matches_the_reference(sim, tmp_path, awkward):
    """Odd channels, (3,5) kernels, strides, a grouped conv, a projection shortcut, a linear:
    with no arena reuse, every value the engine leaves in DDR equals the fixed-point reference."""
    plan = lower(awkward, (1, 3, 16, 16))
    rng = np.random.default_rng(0)
    q = fixed.quantize(plan, rng.standard_normal((4, 3, 16, 16)), 16)
    prog = compile_program(plan, EngineConfig(), q, reuse_arena=False)
    xq = fxp.quantize_input(q, rng.standard_normal((1, 3, 16, 16)))
    env = fxp.run(q, xq, quantized=True, keep=True)
    arena = _run_tb(sim, tmp_path, prog, q, xq)
    assert arena[0] == isa.STATUS["ST_OK"]
    for value, off in prog.arena.items():
        ref = env[value].reshape(-1)
        assert np.array_equal(arena[off : off + ref.size], ref), value


@pytest.mark.parametrize("layout", ["oo-k-ii", "eq9"])
def test_other_tt_layouts_are_bit_exact(sim, tmp_path, layout):
    """Folded views (outer/inner > 1), PERMUTEs and unfolded BN scales in the epilogue."""
    torch.manual_seed(1)
    m = convert(randomize_bn(build_model("resnet20")), flops_remaining=0.5, input_shape=(1, 3, 32, 32),
                layout=layout)  # fmt: skip
    plan = lower(m, (1, 3, 32, 32))
    rng = np.random.default_rng(0)
    q = fixed.quantize(plan, rng.standard_normal((2, 3, 32, 32)), 16)
    prog = compile_program(plan, EngineConfig(), q)
    xq = fxp.quantize_input(q, rng.standard_normal((1, 3, 32, 32)))
    arena = _run_tb(sim, tmp_path, prog, q, xq)
    out = fxp.run(q, xq, quantized=True).reshape(-1)
    assert np.array_equal(arena[prog.arena[plan.output] : prog.arena[plan.output] + out.size], out)


def test_a_fused_scatter_add_after_a_normalising_step_is_bit_exact(sim, tmp_path):
    """The last TT step of a fused CEPD layer whose accumulator frac exceeds the epilogue's 40 bits
    (tiny weights) is round-shifted (its norm) and then requantised, as the reference computes it,
    before the S branch is added (seen on SqueezeNet 1.1's classifier)."""
    plan = lower(cepd_resnet20(), (1, 3, 32, 32))
    last = plan.blocks()[-1].steps[-1]
    consts = dict(plan.consts)
    consts[last.weights[0]] = consts[last.weights[0]] * 2.0**-16
    plan = replace(plan, consts=consts)
    rng = np.random.default_rng(0)
    q = fixed.quantize(plan, rng.standard_normal((2, 3, 32, 32)), 16)
    assert q.nodes[last.name].epi.norm > 0
    prog = compile_program(plan, EngineConfig(), q, reuse_arena=False)
    assert any(g["steps"] > 1 and last.layer in g["name"].split("+") for g in prog.groups)
    xq = fxp.quantize_input(q, rng.standard_normal((1, 3, 32, 32)))
    env = fxp.run(q, xq, quantized=True, keep=True)
    arena = _run_tb(sim, tmp_path, prog, q, xq)
    for value, off in prog.arena.items():
        ref = env[value].reshape(-1)
        assert np.array_equal(arena[off : off + ref.size], ref), value


def _load_driver(path):
    spec = importlib.util.spec_from_file_location("cepd_generated_driver", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_driver_data_path_runs_against_the_csim_library(cepd_project, sim, capsys):
    out, _ = cepd_project
    had_pynq = "pynq" in sys.modules
    drv = _load_driver(out / "driver.py")
    assert ("pynq" in sys.modules) == had_pynq  # imported lazily, only for the board
    acc = drv.Accelerator(device=csim.SimDevice(sim), blob=str(out / "data" / "weights.bin"))
    raw, y, times = acc.run(np.load(out / "data" / "golden_images.npy"))
    expected = np.fromfile(out / "data" / "golden_output.bin", dtype="<i2").reshape(raw.shape)
    assert np.array_equal(raw, expected) and len(times) == len(raw)
    assert drv.main([], device=csim.SimDevice(sim)) == 0
    assert "bit-exact with the fixed-point reference: True" in capsys.readouterr().out


def test_engine_refuses_a_blob_for_another_build(cepd_project, sim):
    out, _ = cepd_project
    blob = np.fromfile(out / "data" / "weights.bin", dtype="<i2")
    hdr = blob[:64].view("<i4")
    hdr[3] += 1  # hw_hash
    dev = csim.SimDevice(sim)
    w, a = dev.allocate(blob.shape, np.int16), dev.allocate((64,), np.int16)
    w[:] = blob
    for name, buf in (("WMEM0", w), ("WMEM1", w), ("AMEM0", a), ("AMEM1", a)):
        dev.write(isa.REG[name].offset, buf.physical_address)
    dev.write(isa.REG["CTRL"].offset, isa.AP_START)
    assert dev.read(isa.REG["CTRL"].offset) & isa.AP_DONE
    assert a[0] == isa.STATUS["ST_BAD_HASH"]


def test_requant_equals_ap_fixed_conversion(tmp_path):
    """cepd_fixed.h's explicit shift-round-saturate is ap_fixed's AP_RND/AP_SAT conversion."""
    from cepd_deploy.targets.pynq_z1.render import render_engine

    render_engine(EngineConfig(), tmp_path)
    (tmp_path / "t.cpp").write_text(
        """
#include <ap_fixed.h>
#include <cstdio>
#include <cstdlib>
#include "cepd_fixed.h"
template <int F, int S> int check(unsigned seed) {
  int bad = 0;
  for (int i = 0; i < 20000; i++) {
    seed = seed * 1103515245u + 12345u;
    long long raw = ((long long)(seed >> 1) << 20) ^ (long long)(seed * 2654435761u);
    raw = (raw % (1LL << 40)) - (1LL << 39);
    ap_fixed<64, 64 - F> x;
    x.range(63, 0) = raw;
    ap_fixed<16, 16 - (F - S), AP_RND, AP_SAT> y = x;
    if ((short)y.range(15, 0).to_int() != (short)requant(wide_t(raw), S).to_int()) bad++;
  }
  return bad;
}
int main() {
  int bad = check<30, 18>(1) + check<24, 12>(2) + check<20, 20>(3) + check<12, 1>(4) + check<40, 30>(5);
  std::printf("%d\\n", bad);
  return bad != 0;
}
"""
    )
    exe = tmp_path / "t"
    inc = ["-isystem", str(csim.ap_types_dir()), "-I", str(tmp_path / "src")]
    subprocess.run([CXX, "-O1", "-std=c++14", "-w", *inc,
                    str(tmp_path / "t.cpp"), "-o", str(exe)], check=True)  # fmt: skip
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.strip() == "0"


def test_missing_hls4ml_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(csim.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CEPDError, match="hls4ml"):
        csim.ap_types_dir()


# -- injection ---------------------------------------------------------------------------------
# torch.fx cannot generate code for module names with a double quote, a newline or a backslash, so the
# module names of the real network hold everything else; the Plan is then renamed with the rest.
NASTY = ["conv'; rm -rf /", "bn[exec touch PWNED]{x}", "act;next", "proj$(touch PWNED2)}{ ?? ü"]
EXTRA = '"\n;$(touch PWNED4)[x]{\\'
LABEL = 'model "q" [exec touch PWNED3] {b} $(id); `x`\n|line2 ??='


class Nasty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        mods = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, stride=2, padding=1),
        )
        for name, mod in zip(NASTY, mods):
            self.add_module(name, mod)

    def forward(self, x):
        for name in NASTY:
            x = getattr(self, name)(x)
        return x


def _renamed(plan: Plan, suffix: str) -> Plan:
    """Every node, value, const and layer name with ``suffix`` appended."""
    f = lambda s: s + suffix if s else s  # noqa: E731
    nodes = []
    for n in plan.nodes:
        epi = replace(n.epilogue, scale=f(n.epilogue.scale), bias=f(n.epilogue.bias))
        nodes.append(replace(n, name=f(n.name), inputs=tuple(map(f, n.inputs)), output=f(n.output),
                             weights=tuple(map(f, n.weights)), layer=f(n.layer), epilogue=epi))  # fmt: skip
    layers = {f(k): replace(v, name=f(v.name)) for k, v in plan.layers.items()}
    consts = {f(k): v for k, v in plan.consts.items()}
    return Plan(f(plan.input), plan.input_shape, f(plan.output), nodes, consts, layers)


def test_generated_code_is_injection_safe(tmp_path):
    torch.manual_seed(0)
    for target in (0.873, 0.809, 0.758, 0.9):  # the reachable FLOPs fractions of this small net
        try:
            model = convert(randomize_bn(Nasty()), flops_remaining=target, input_shape=(1, 3, 12, 12))
            break
        except CEPDError:
            continue
    plan = lower(model, (1, 3, 12, 12))
    assert any(n.op is Op.SCATTER_ADD for n in plan.nodes)  # a CEPD layer with a nasty name
    assert any("rm -rf" in n.name for n in plan.nodes) and any("$(touch" in n.name for n in plan.nodes)
    plan = _renamed(plan, EXTRA)
    out = tmp_path / "proj"
    r = build(plan, out, csim=True, golden=2, label=LABEL)
    assert r["csim"]["bit_exact"]  # the escaped names and label compiled into the testbench
    assert not list(tmp_path.rglob("PWNED*"))
    # C: the label and op names round-trip through model_info.h
    (tmp_path / "p.cpp").write_text(
        '#include <cstdio>\n#include "model_info.h"\nint main() { std::fputs(CEPD_MODEL_LABEL, stdout);'
        " for (int i = 0; i < CEPD_N_OPS; i++) {"
        " std::fputc(0, stdout); std::fputs(CEPD_OP_NAMES[i], stdout); } return 0; }\n"
    )
    subprocess.run(
        [CXX, "-I", str(out / "tb"), str(tmp_path / "p.cpp"), "-o", str(tmp_path / "p")], check=True
    )
    printed = (
        subprocess.run([str(tmp_path / "p")], capture_output=True, check=True).stdout.decode().split("\0")
    )
    assert printed == [LABEL] + [n.name for n in plan.nodes]
    # Python: the driver's label round-trips
    assert _load_driver(out / "driver.py").MODEL_LABEL == LABEL
    # Make and Tcl identifiers are sanitised; the raw label never reaches the Makefile
    make = (out / "Makefile").read_text()
    assert not any(bad in make for bad in ("$(id)", "[exec", "`x`", '"q"', "{b}"))
    assert json.loads((out / "report.json").read_text())["model"] == LABEL
    if TCLSH is None:
        pytest.skip("tclsh not installed: Tcl checks skipped")
    for tcl in out.glob("*.tcl"):
        check = f"set f [open {{{tcl}}}]; set t [read $f]; close $f; puts [info complete $t]"
        assert subprocess.run([TCLSH], input=check, capture_output=True, text=True).stdout.strip() == "1", tcl
    safe = (
        f"set f [open {{{out / 'project.tcl'}}}]; fconfigure $f -encoding utf-8; set t [read $f]; close $f\n"
        "set i [interp create -safe]\n$i eval $t\n"
        "fconfigure stdout -encoding utf-8\nputs -nonewline [$i eval {set model_label}]\n"
    )
    got = subprocess.run([TCLSH], input=safe.encode(), capture_output=True, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode("utf-8") == LABEL
    assert not list(tmp_path.rglob("PWNED*"))
