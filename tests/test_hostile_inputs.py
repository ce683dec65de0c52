"""Hostile and unlucky input (issue 22): no code runs from the working directory, a rebuild never
deletes what it did not make, thread counts cannot crash the process, hostile labels give
generated files that parse, damaged caches repair themselves, the custom-op library runs every
fused layer, and every malformed command line is one line on stderr with exit 2.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cepd_deploy import ownership
from cepd_deploy.cli import common, main
from cepd_deploy.errors import CEPDError
from cepd_deploy.threads import clamp, machine_threads

REPO = Path(__file__).resolve().parents[1]
TCLSH = shutil.which("tclsh")
CXX = shutil.which("g++")


class Tiny(nn.Module):
    """A network every target builds in well under a second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def _tiny_plan(model: nn.Module | None = None, shape: tuple[int, ...] = (1, 3, 8, 8)):
    """The Plan of ``model`` (default :class:`Tiny`): targets build Plans, not torch modules."""
    from cepd_deploy.frontend.load import load_plan

    return load_plan((model or Tiny()).eval(), shape).plan


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error" in lines[0]
    return lines[0]


# -- 1. re-execution never imports a package from the working directory ------------------------------
PLANTED = """
from pathlib import Path
Path(__file__).resolve().parents[1].joinpath("PLANTED_RAN").write_text("code from the cwd ran")
"""


def _plant(cwd: Path) -> Path:
    pkg = cwd / "cepd_deploy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLANTED)
    (pkg / "__main__.py").write_text(PLANTED)
    (pkg / "cli").mkdir()
    (pkg / "cli" / "__init__.py").write_text(PLANTED + "\ndef entry():\n    pass\n")
    return cwd / "PLANTED_RAN"


def test_reexec_never_runs_a_planted_package(tmp_path):
    """The command re-executes itself (huge pages) from a folder holding a ``cepd_deploy``
    package: the installed package runs, the planted one never does."""
    cwd = tmp_path / "work"
    marker = _plant(cwd)
    # the old way, `python -m cepd_deploy`, runs the planted package (the test can fail)
    subprocess.run([sys.executable, "-m", "cepd_deploy", "--version"], cwd=cwd, capture_output=True)
    assert marker.exists()
    marker.unlink()
    # the command process itself (a console script lives elsewhere), forced to re-execute
    script = tmp_path / "bin" / "cepd-deploy-test"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from cepd_deploy.cli import common
        common.COMMAND_PROCESS = True
        common.hugepage_env = lambda: dict(os.environ, CEPD_REEXECUTED="1")
        sys.argv = ["cepd-deploy", "--version"]
        common.measure_on_hugepages()
        raise SystemExit("did not re-execute")
    """)
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cepd-deploy ")
    assert not marker.exists()
    # and the arguments themselves, from that folder
    done = subprocess.run([sys.executable, *common.command_argv(["--version"])], cwd=cwd, capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("cepd-deploy ") and not marker.exists()
    assert "-m" not in common.command_argv(["bench"])


# -- 2. a rebuild replaces only what the build generated ---------------------------------------------
def _pynq(out: Path, label: str = "tiny", **kw) -> dict:
    from cepd_deploy.frontend.load import load_plan
    from cepd_deploy.targets.pynq_z1.project import build

    return build(load_plan(Tiny().eval(), (3, 8, 8)).plan, out, label=label, golden=1, calib=1, **kw)


def test_pynq_rebuild_keeps_vivado_and_user_files(tmp_path):
    from cepd_deploy.targets.pynq_z1.project import MARKER

    out = tmp_path / "proj"
    _pynq(out)
    generated = json.loads((out / MARKER).read_text())["files"]
    assert "driver.py" in generated and "data/weights.bin" in generated
    planted = {"overlay/cepd_tiny.bit": b"bitstream", "cepd_tiny_hls/solution1/x.rpt": b"hls",
               "my_model.pt": b"the user's model", "data/my_images.npy": b"mine"}  # fmt: skip
    for rel, data in planted.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    _pynq(out, label="tiny2")
    for rel, data in planted.items():
        assert (out / rel).read_bytes() == data, rel
    assert "tiny2" in (out / "driver.py").read_text()
    assert json.loads((out / MARKER).read_text())["complete"] is True
    # a generated file the user edited is not overwritten: exit 2 naming it, nothing changes
    (out / "driver.py").write_text("# my edits\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["build", "resnet20", "--target", "pynq-z1", "-o", str(out)]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a folder not made by the builder is refused, and kept as it is
    other = tmp_path / "other"
    other.mkdir()
    (other / "Makefile").write_text("mine")
    with pytest.raises(CEPDError, match="not made by"):
        _pynq(other)
    assert (other / "Makefile").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_pynq_rebuild_refuses_to_overwrite_a_foreign_file(tmp_path):
    from cepd_deploy.targets.pynq_z1 import project

    out = tmp_path / "proj"
    _pynq(out)
    new = tmp_path / ".proj.newbuild"  # what a build stages: one file more than last time
    shutil.copytree(out, new)
    (new / project.MARKER).unlink()
    (new / "notes.txt").write_text("generated")
    (out / "notes.txt").write_text("the user's notes")
    with pytest.raises(CEPDError, match="notes.txt would be overwritten"):
        project._install(new, out)
    assert (out / "notes.txt").read_text() == "the user's notes"
    (out / "notes.txt").unlink()
    project._install(new, out)  # no clash: in it goes, and the marker lists it
    assert "notes.txt" in json.loads((out / project.MARKER).read_text())["files"]


def test_pynq_interrupted_install_is_completed_by_the_next_build(tmp_path):
    from cepd_deploy.targets.pynq_z1.project import MARKER

    out = tmp_path / "proj"
    _pynq(out)
    marker = json.loads((out / MARKER).read_text())
    marker["complete"] = False
    marker["files"] = dict.fromkeys(marker["files"])  # what an install killed half-way leaves
    (out / MARKER).write_text(json.dumps(marker))
    (out / "driver.py").write_text("half")
    _pynq(out)
    ast.parse((out / "driver.py").read_text())
    assert json.loads((out / MARKER).read_text())["complete"] is True


def test_pynq_build_sweeps_temp_folders_of_killed_builds(tmp_path):
    out = tmp_path / "proj"
    stale, fresh = tmp_path / ".proj.cepd-tmp-abcd1234", tmp_path / ".proj.cepd-tmp-zzzz9999"
    mine = tmp_path / ".proj.settings"  # a hidden folder of the user's: never a build's
    for d in (stale, fresh, mine):
        d.mkdir()
    old = time.time() - 2 * ownership.STALE_S
    os.utime(stale, (old, old))
    os.utime(mine, (old, old))
    _pynq(out)
    assert not stale.exists() and fresh.exists() and mine.exists()


@pytest.mark.slow
def test_tvm_rebuild_touches_only_its_own_files(tmp_path):
    from cepd_deploy.targets import tvm as tvm_target
    from cepd_deploy.targets.tvm.build import check_owned

    plan = _tiny_plan()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    (out / "model.so").write_bytes(b"the user's library")
    with pytest.raises(CEPDError, match="model.so would be overwritten"):
        tvm_target.build(plan, out)
    assert (out / "model.so").read_bytes() == b"the user's library"
    (out / "model.so").unlink()
    (out / "manifest.json").write_text('{"my": "config"}')
    with pytest.raises(CEPDError, match="manifest.json would be overwritten"):
        check_owned(out)
    (out / "manifest.json").unlink()
    stale = out / ".tvm-build-abcd1234"
    stale.mkdir()
    old = time.time() - 2 * ownership.STALE_S
    os.utime(stale, (old, old))
    m = tvm_target.build(plan, out)
    assert m["files"]["model.so"] == ownership.digest(out / "model.so")
    assert not stale.exists() and (out / "notes.txt").read_text() == "the user's"
    tvm_target.build(plan, out)  # its own files: replaced
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so", "notes.txt"]
    (out / "model.so").write_bytes((out / "model.so").read_bytes() + b"\0")  # changed since
    with pytest.raises(CEPDError, match="model.so would be overwritten"):
        check_owned(out)


# -- 7. thread counts ---------------------------------------------------------------------------------
def test_thread_counts_are_validated_and_clamped(capsys):
    cap = machine_threads()
    assert clamp(1) == 1 and clamp(cap) == cap
    assert clamp(cap + 3000, "--threads") == cap
    assert "using" in capsys.readouterr().err
    for bad in (0, -3, 2.5, "x", True):
        with pytest.raises(CEPDError):
            clamp(bad)
    from cepd_deploy.targets.onnx.session import session_options

    assert session_options(100000).intra_op_num_threads == cap
    with pytest.raises(CEPDError):
        session_options(-3)
    from cepd_deploy.targets import tvm as tvm_target

    with pytest.raises(CEPDError, match=">= 1"):
        tvm_target.build(_tiny_plan(), "unused", threads=-3)


def test_native_pool_never_aborts_under_a_memory_cap():
    """3000 threads of 8 MB stacks cannot be created under a 2 GB address-space cap: the kernel's
    pool keeps the threads it gets (clamped to the cores) instead of std::terminate (exit 134)."""
    from cepd_deploy import native

    if not native.available():
        pytest.skip("the native kernel is not built here")
    code = textwrap.dedent(f"""
        import ctypes, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        lib = ctypes.CDLL({native.library_path()!r})
        lib.cepd_tts_set_threads(3000)
        print(lib.cepd_tts_threads())
        lib.cepd_tts_set_threads(-3)
        print(lib.cepd_tts_threads())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    most, least = map(int, done.stdout.split())
    assert 1 <= most <= max(os.cpu_count() or 1, 1) and least == 1


# -- 8. hostile labels reach generated code inert, and the build checks what it wrote -------------------
LABELS = ['a"""b', "x'''y", "back\\slash\\", 'nl\nline "q" $HOME ${x} {b} [exec touch PWNED] `c`; rm -rf /',
          "resnet20_cepd50", "\\N{BULLET} \\x00 ü 😀 \r\t??=", "}{][\"'", "`"]  # fmt: skip


def _md_title(readme: Path) -> str:
    """The text a Markdown renderer shows for the README's title (its code span, unescaped)."""
    return _md_title_text(readme.read_text(encoding="utf-8"))


def _md_title_text(text: str) -> str:
    line = text.split("\n")[0]  # CommonMark ends lines at \n and \r only
    start = line.index("`")
    fence = "`" * (len(line[start:]) - len(line[start:].lstrip("`")))
    end = line.rindex(fence)
    body = line[start + len(fence) : end]
    if body.startswith(" ") and body.endswith(" ") and body.strip():
        body = body[1:-1]
    return body


@pytest.mark.parametrize("label", LABELS)
def test_hostile_labels_give_files_that_parse(tmp_path, label):
    from cepd_deploy.targets.pynq_z1.checks import tcl_well_formed

    out = tmp_path / "proj"
    _pynq(out, label=label)
    driver = (out / "driver.py").read_text(encoding="utf-8")
    tree = ast.parse(driver)
    doc = ast.get_docstring(tree)
    assert doc.startswith("Driver of the CEPD overlay") and "Generated by cepd-deploy" in doc  # not cut short
    assign = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "MODEL_LABEL")
    assert ast.literal_eval(assign.value) == label
    for tcl in out.glob("*.tcl"):
        text = tcl.read_text(encoding="utf-8")
        assert tcl_well_formed(text), tcl
        if TCLSH:
            probe = f"set f [open {{{tcl}}}]; fconfigure $f -encoding utf-8; puts [info complete [read $f]]"
            assert subprocess.run([TCLSH], input=probe, capture_output=True, text=True).stdout.strip() == "1"
    if CXX:
        cpp = tmp_path / "p.cpp"
        cpp.write_text('#include "model_info.h"\nint main() { return CEPD_MODEL_LABEL[0] == 1; }\n')
        done = subprocess.run(
            [CXX, "-fsyntax-only", "-I", str(out / "tb"), str(cpp)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    folded = label.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    assert " ".join(_md_title(out / "README.md").split()) == " ".join(folded.split())
    assert not list(tmp_path.rglob("PWNED*"))


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_every_escape_holds_for_any_text(text):
    """The quoting of each generated language, on arbitrary text (hypothesis)."""
    from cepd_deploy.targets.pynq_z1.checks import tcl_well_formed
    from cepd_deploy.targets.pynq_z1.escape import md_code, py_doc, py_string, tcl_string

    tree = ast.parse(f'"""Driver for {py_doc(text)}.\n\nMore."""\nX = {py_string(text)}\n')
    assert ast.get_docstring(tree).endswith("More.") and ast.literal_eval(tree.body[1].value) == text
    assert tcl_well_formed(f"set v {tcl_string(text)}\n")
    readme = f"# CEPD overlay for {md_code(text)} on the PYNQ-Z1\n"
    assert "\n" not in readme[:-1] and "\r" not in readme
    shown = _md_title_text(readme)
    assert shown == re.sub(r"[\r\n\t]+", " ", text)


def test_issue_18_readme_title_shows_the_label_as_it_is(tmp_path):
    _pynq(tmp_path / "p", label="resnet20_cepd50")
    title = (tmp_path / "p" / "README.md").read_text().splitlines()[0]
    assert title == "# CEPD overlay for `resnet20_cepd50` on the PYNQ-Z1"


def test_a_model_file_named_with_triple_quotes_builds_a_driver_that_parses(tmp_path):
    from cepd_deploy import build_model
    from cepd_deploy.model.format import save

    path = tmp_path / 'a"""b.pt'
    save(build_model("resnet20").eval(), path, input_shape=(3, 32, 32))
    out = tmp_path / "proj"
    assert (
        main(["build", str(path), "--target", "pynq-z1", "-o", str(out), "--golden", "1", "--calib", "1"])
        == 0
    )
    tree = ast.parse((out / "driver.py").read_text())
    assert ast.get_docstring(tree).startswith("Driver of the CEPD overlay")


def test_the_build_refuses_to_report_success_on_files_that_do_not_parse(tmp_path, monkeypatch):
    from cepd_deploy.targets.pynq_z1 import escape, render

    monkeypatch.setattr(escape, "py_doc", lambda s: str(s))  # the docstring escaping of old
    monkeypatch.setattr(render, "py_doc", lambda s: str(s))
    with pytest.raises(CEPDError, match="driver.py does not parse"):
        _pynq(tmp_path / "proj", label='a"""b')
    assert not (tmp_path / "proj").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(render, "tcl_string", lambda s: '"' + str(s) + '"')
    with pytest.raises(CEPDError, match="not a complete Tcl script"):
        _pynq(tmp_path / "proj", label='x" {')


def test_tcl_parser_agrees_with_tclsh_on_random_scripts():
    """Never "well formed" where Tcl's own ``info complete`` says the script is incomplete."""
    from cepd_deploy.targets.pynq_z1.checks import tcl_well_formed

    if TCLSH is None:
        pytest.skip("tclsh is not installed: the parser's own cases are checked above")
    rng = np.random.default_rng(0)
    alpha = list('ab {}[]"\\$;\n#')
    scripts = ["".join(rng.choice(alpha, size=int(rng.integers(1, 14)))) for _ in range(3000)]

    def q(s: str) -> str:
        for a, b in (("\\", "\\\\"), ("{", "\\{"), ("}", "\\}"), ("[", "\\["), ("]", "\\]"), ("$", "\\$"),
                     ('"', '\\"'), ("\n", "\\n")):  # fmt: skip
            s = s.replace(a, b)
        return s

    prog = "".join(f'puts [info complete "{q(s)}"]\n' for s in scripts)
    verdicts = subprocess.run([TCLSH], input=prog, capture_output=True, text=True).stdout.split()
    assert len(verdicts) == len(scripts)
    wrong = [s for s, v in zip(scripts, verdicts) if tcl_well_formed(s) and v != "1"]
    assert wrong == []


def test_invalid_conv_geometry_is_one_line():
    """Before: a torch trace (ZeroDivisionError, 'non-positive stride is not supported', ...)."""
    from cepd_deploy.model.layers import CEPDConv2d

    for kw in (dict(stride=0), dict(stride=-2), dict(padding=-1), dict(dilation=0), dict(stride=(1, 0))):
        with pytest.raises(CEPDError, match=next(iter(kw))):
            CEPDConv2d(8, 8, 3, ranks=(4, 4), **kw)


# -- 9. damaged caches are discarded with a notice and rebuilt -----------------------------------------
@pytest.mark.parametrize(
    "content,kept",
    [
        ("garbage{", 0),
        ("[1, 2]", 0),
        ('"a string"', 0),
        ('{"[[1], null]": 2.5, "[[1], [4]]": NaN, "[[2], null]": -1, "[[3], null]": "7", '
         '"[[4], null]": {"x": 1}, "[[5], null]": true, "[[6], null]": Infinity, "not a key": 1.0, '
         '"[[7], null]": 0}', 1),
    ],
)  # fmt: skip
def test_latency_cache_entries_are_checked(tmp_path, capsys, content, kept):
    from cepd_deploy.frontend.allocation import OrtLatency

    path = tmp_path / "lat.json"
    path.write_text(content)
    lat = OrtLatency(cache=path)
    assert len(lat.table) == kept
    assert all(math.isfinite(v) and v > 0 for v in lat.table.values())
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "note:" in err and "Traceback" not in err


def test_cache_root_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from cepd_deploy.cache import CACHE_ENV, cache_root

    f = tmp_path / "cache"
    f.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(f))
    with pytest.raises(CEPDError, match="is a file"):
        cache_root()
    monkeypatch.setenv(CACHE_ENV, str(f / "sub" / "dir"))
    with pytest.raises(CEPDError, match="is a file"):
        cache_root("tvm")


def test_csim_cache_entries_are_checked_by_digest(tmp_path, capsys):
    """A cached engine build whose binaries are truncated, replaced or not listed is discarded."""
    from cepd_deploy.targets.pynq_z1 import csim

    root = tmp_path / "entry"
    root.mkdir()
    for name in csim.BINARIES:
        (root / name).write_bytes(b"\x7fELF" + name.encode() * 100)
    assert csim._entry_damaged(root) == f"no readable {csim.DIGESTS}"
    sums = {n: ownership.digest(root / n) for n in csim.BINARIES}
    (root / csim.DIGESTS).write_text(json.dumps(sums))
    assert csim._entry_damaged(root) is None
    data = (root / "engine.o").read_bytes()
    (root / "engine.o").write_bytes(data[: len(data) // 2])  # truncated
    assert "engine.o does not match" in csim._entry_damaged(root)
    (root / "engine.o").write_bytes(data.replace(b"engine", b"planted"))  # a planted object
    assert "engine.o does not match" in csim._entry_damaged(root)
    (root / csim.DIGESTS).write_text("[]")
    assert csim._entry_damaged(root) == f"{csim.DIGESTS} is not a table"


@pytest.mark.slow
@pytest.mark.skipif(CXX is None, reason="g++ (C++ compiler for the C-simulation) not installed")
def test_csim_rebuilds_a_truncated_or_planted_engine(tmp_path, capsys):
    from cepd_deploy.targets.pynq_z1 import csim
    from cepd_deploy.targets.pynq_z1.config import EngineConfig

    try:
        csim.ap_types_dir()
    except CEPDError:
        pytest.skip("hls4ml (ap_types headers) not installed")
    sim = csim.build_sim(EngineConfig(), cache=tmp_path)
    good = sim.engine_obj.read_bytes()
    sim.engine_obj.write_bytes(good[:100])  # truncated (a full disk, a killed copy)
    again = csim.build_sim(EngineConfig(), cache=tmp_path)
    assert again.engine_obj.read_bytes() == good and "discarding" in capsys.readouterr().err
    lib = again.lib.read_bytes()
    again.lib.write_bytes(lib.replace(b"cepd_sim", b"cepd_xim", 1))  # a planted library
    third = csim.build_sim(EngineConfig(), cache=tmp_path)
    assert third.lib.read_bytes() == lib and "libcepd_sim.so does not match" in capsys.readouterr().err


def test_tvm_tuning_results_of_the_wrong_form_are_discarded(tmp_path):
    from cepd_deploy.targets.tvm import tune

    folder = tmp_path / "entry"
    folder.mkdir()
    path = folder / tune.RESULT
    good = {
        "key": "k",
        "label": "conv",
        "target": "t",
        "trials": 2,
        "hand_us": 4.0,
        "tuned_us": None,
        "db": {},
    }
    cases = [("garbage{", "not JSON"), ("[]", "JSON list"), ({**good, "trials": "2"}, "trials"),
             ({**good, "trials": True}, "trials"), ({**good, "hand_us": float("nan")}, "hand_us"),
             ({**good, "hand_us": -1.0}, "hand_us"), ({**good, "tuned_us": "fast"}, "tuned_us"),
             ({**good, "db": {"database_workload.json": "0" * 64}}, "database_workload.json")]  # fmt: skip
    for content, why in cases:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        assert why in tune._result_damaged(path, folder), content
    path.write_text(json.dumps(good))
    assert tune._result_damaged(path, folder) is None
    (folder / "database_tuning_record.json").write_text('[0, {"a": 1}]\n')
    assert "database_tuning_record.json is not the database" in tune._result_damaged(path, folder)
    (folder / "database_tuning_record.json").write_text("garbage{{\n")
    assert tune._db_damaged(folder)


@pytest.mark.slow
def test_a_garbage_tuning_database_is_rebuilt_not_fatal(tmp_path, monkeypatch, capsys):
    """Before: every later tuned build crashed until the cache was deleted by hand."""
    from cepd_deploy.targets import tvm as tvm_target
    from cepd_deploy.targets.tvm import tune

    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    monkeypatch.setenv(tune.CACHE_ENV, str(tmp_path / "cache"))
    model = _tiny_plan(Conv(), (1, 4, 8, 8))
    tvm_target.build(model, tmp_path / "a", tune_trials=2)
    (folder,) = (tmp_path / "cache").iterdir()
    for name, text in (("database_tuning_record.json", "garbage{{\n"), (tune.RESULT, '{"trials": "x"}')):
        (folder / name).write_text(text)
        m = tvm_target.build(model, tmp_path / "b", tune_trials=2, verify=True)
        assert m["verify"]["max_rel_err"]["plan"] <= 1e-4
        assert "discarding the damaged tuning cache entry" in capsys.readouterr().err
        assert tune._result_damaged(folder / tune.RESULT, folder) is None  # tuned again, whole


@pytest.mark.slow
def test_tvm_load_refuses_a_truncated_library_and_bad_manifests(tmp_path):
    """A truncated model.so used to kill the process with SIGBUS on load: now one line."""
    from cepd_deploy.targets import tvm as tvm_target

    out = tmp_path / "out"
    tvm_target.build(_tiny_plan(), out)
    lib = (out / "model.so").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "model.so").write_bytes(lib[: len(lib) // 2])
    code = f"from cepd_deploy.targets.tvm import load\nload({str(out)!r})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "CEPDError" in done.stderr and "digest" in done.stderr
    legacy = {k: v for k, v in manifest.items() if k != "files"}  # a build from before digests
    (out / "manifest.json").write_text(json.dumps(legacy))
    with pytest.raises(CEPDError, match="not a complete shared library"):
        tvm_target.load(out)
    for bad, field in (([], "not a build manifest"), ({**manifest, "target": "llvm"}, "'target'"),
                       ({**manifest, "input_shape": "1,3,8,8"}, "'input_shape'"),
                       ({**manifest, "library": "../../etc/passwd"}, "'library'")):  # fmt: skip
        (out / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(CEPDError, match=field):
            tvm_target.load(out)


# -- 11. temporary files, export --verify, the custom-op library's reference path ----------------------
def test_output_path_sweeps_stale_temp_files_of_killed_runs(tmp_path):
    out = tmp_path / "model.pt"
    stale, fresh, other = (tmp_path / ".model.pt.0a1b2c3d.tmp", tmp_path / ".model.pt.99999999.tmp",
                           tmp_path / ".other.pt.0a1b2c3d.tmp")  # fmt: skip
    for p in (stale, fresh, other):
        p.write_text("partial")
    old = time.time() - 2 * ownership.STALE_S
    for p in (stale, other):
        os.utime(p, (old, old))
    common.output_path(str(out))
    assert not stale.exists() and fresh.exists() and other.exists()


def test_export_verify_writes_nothing_when_verification_fails(tmp_path, monkeypatch, capsys):
    from cepd_deploy.targets.onnx import verify

    real = verify.summary

    def failing(checks):
        return {**real(checks), "ok": False}

    monkeypatch.setattr(verify, "summary", failing)
    out = tmp_path / "m.onnx"
    assert main(["export", "resnet20", "--verify", "-o", str(out)]) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "not written" in capsys.readouterr().out
    monkeypatch.setattr(verify, "summary", real)
    assert main(["export", "resnet20", "--verify", "-o", str(out)]) == 0 and out.stat().st_size > 0


def _fused_layer(layout: str, *, kappa: int, stride: int = 1, kernel=(3, 3), bn: bool = True, seed: int = 0):
    from test_onnx_helpers import OneLayer, random_layer, randomise_bn

    import cepd_deploy as cd
    from cepd_deploy.targets.onnx import to_model

    pad = (kernel[0] // 2, kernel[1] // 2)
    layer = random_layer(6, 12, kernel, ranks_frac=[0.5], kappa=kappa, layout=layout, stride=stride,
                         padding=pad, seed=seed)  # fmt: skip
    model = randomise_bn(OneLayer(layer, bn, False, "relu"), seed)
    plan = cd.lower(model, (2, 6, 9, 9))
    return to_model(plan, fused=True), model


@pytest.mark.parametrize("layout", ["o1|o2|o3|k|i1|i2|i3", "oo-k-ii", "eq9", "k|o1|i1"])
@pytest.mark.parametrize(
    "kappa,stride,kernel", [(0, 1, (3, 3)), (5, 2, (3, 3)), (4, 2, (1, 1)), (3, 1, (1, 3))]
)
def test_bare_library_recipe_runs_layers_the_kernel_does_not(layout, kappa, stride, kernel):
    """``register_custom_ops_library`` and the fused model as exported: a layer the native kernel
    does not run goes through the library's reference path (before: session load failed)."""
    import onnxruntime as ort

    from cepd_deploy.targets.onnx import build_session, ort_library, run_session
    from cepd_deploy.targets.onnx.ort_library import is_native

    if not ort_library.available():
        pytest.skip("the custom-op library is not built here")
    model, torch_model = _fused_layer(layout, kappa=kappa, stride=stride, kernel=kernel)
    nodes = [n for n in model.graph.node if n.op_type == "TTSparseConv"]
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 9)).astype(np.float32)
    so = ort.SessionOptions()
    so.register_custom_ops_library(ort_library.get_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    runs = ort_library.runs()
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert ort_library.runs() == runs + len(nodes)  # the library ran every fused node itself
    body = run_session(build_session(model, threads=1), x)  # stock onnxruntime: the function bodies
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x)).numpy()
    for got in (y, body):
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    if not any(is_native(n) for n in nodes):
        assert all(any(a.name == "ref_desc" for a in n.attribute) for n in nodes)


def test_native_kernel_scales_the_sparse_branch_with_an_unfolded_bn():
    """A layout whose BN scale cannot fold into the cores keeps it in the epilogue: the kernel
    must scale the sparse branch too (it added S after the scale: errors of 0.6 x max|y|)."""
    import cepd_deploy as cd
    from cepd_deploy import native
    from cepd_deploy.plan.reference import run as run_plan

    if not native.available():
        pytest.skip("the native kernel is not built here")
    from test_onnx_helpers import OneLayer, random_layer, randomise_bn

    layer = random_layer(7, 13, (1, 1), ranks_frac=[0.1], kappa=7, layout="o1|o2|o3|k|i1|i2|i3", seed=469)
    model = randomise_bn(OneLayer(layer, True, False, None), 469)
    plan = cd.lower(model, (2, 7, 13, 13))
    name = next(k for k, v in plan.layers.items() if v.kind == "cepd")
    kernel, _, _ = native.from_plan(plan, name)
    assert kernel.spec.scale and kernel.spec.kappa
    x = np.random.default_rng(0).standard_normal((2, 7, 13, 13)).astype(np.float32)
    ref = run_plan(plan, x).numpy()
    assert np.abs(kernel(x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_library_refuses_a_hostile_ref_desc_at_load():
    import onnx
    import onnxruntime as ort

    from cepd_deploy.targets.onnx import ort_library

    if not ort_library.available():
        pytest.skip("the custom-op library is not built here")
    model, _ = _fused_layer("o1|o2|o3|k|i1|i2|i3", kappa=3)
    node = next(n for n in model.graph.node if n.op_type == "TTSparseConv")
    attr = next(a for a in node.attribute if a.name == "ref_desc")
    good = list(attr.ints)
    for bad in (good[:-1], [*good, 7], [2, *good[1:]], [v * 1000 for v in good], [-1] * len(good),
                good[:22] + [60] + good[23:]):  # fmt: skip
        m = onnx.ModelProto()
        m.CopyFrom(model)
        a = next(a for a in next(n for n in m.graph.node if n.op_type == "TTSparseConv").attribute
                 if a.name == "ref_desc")  # fmt: skip
        del a.ints[:]
        a.ints.extend(bad)
        so = ort.SessionOptions()
        so.register_custom_ops_library(ort_library.get_library_path())
        with pytest.raises(Exception, match="ref_desc"):
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


# -- 10. every malformed command line: exit 2, one line on stderr --------------------------------------
@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot create files in (chmod; as root, the immutable attribute)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no folder is read-only to this process")
    try:
        yield d
    finally:
        subprocess.run([chattr, "-i", str(d)], capture_output=True)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


CASES = [
    (["demo", "--bogus"], "unrecognized arguments"),
    (["convert", "--arch", "resnet20", "--flops-remaining", "2", "-o", "{tmp}/x.pt"], "must be in (0, 1]"),
    (
        ["convert", "--arch", "resnet20", "--flops-remaining", "0.5", "--threads", "-3", "-o", "{tmp}/x.pt"],
        "--threads: must be >= 1",
    ),
    (["convert", "--arch", "resnet20", "--flops-remaining", "0.5", "-o", "{tmp}"], "is a folder"),
    (["convert", "--arch", "resnet20", "--flops-remaining", "0.5", "-o", "{file}/x.pt"], "not a folder"),
    (["inspect", "resnet20", "--input-shape", "3", "x", "5"], "invalid int value"),
    (["inspect", "no_such_model"], "neither a model file"),
    (["compress", "--threads", "0", "-o", "{tmp}/c"], "--threads: must be >= 1"),
    (["analyze", "nope"], "invalid choice"),
    (["export", "resnet20", "-o", "{tmp}/x.txt"], "should end in .onnx"),
    (["export", "resnet20", "-o", "{dir}.onnx"], "is a folder"),
    (
        ["build", "resnet20", "--target", "llvm", "-o", "{tmp}/o", "--threads", "-3"],
        "--threads: must be >= 1",
    ),
    (["build", "resnet20", "--target", "nope", "-o", "{tmp}/o"], "unknown target"),
    (["build", "resnet20", "--target", "pynq-z1", "-o", "{file}"], "not a folder"),
    (["build", "resnet20", "--target", "llvm", "-o", "{file}"], "not a folder"),
    (["simulate", "resnet20", "--target", "tpu"], "unknown target"),
    (["bench", "--repeats", "0"], "--repeats: must be >= 1"),
    (["bench", "--warmup", "-1"], "--warmup: must be >= 0"),
    (["bench", "--threads", "0"], "--threads: must be >= 1"),
    (["bench", "--targets", "nope"], "invalid choice"),
    (["bench", "--csv", "{tmp}"], "is a folder"),
    (["doctor", "--bogus"], "unrecognized arguments"),
    (["nope"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_malformed_command_lines_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("a file")
    (tmp_path / "d.onnx").mkdir()
    subs = {"{tmp}": str(tmp_path), "{file}": str(tmp_path / "file"), "{dir}": str(tmp_path / "d")}
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _cli(args, capsys)
    assert code == 2
    assert message in _one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "--arch", "resnet20", "--flops-remaining", "0.5", "-o", "{ro}/x.pt"],
        ["export", "resnet20", "-o", "{ro}/x.onnx"],
        ["build", "resnet20", "--target", "pynq-z1", "-o", "{ro}/p"],
        ["build", "resnet20", "--target", "llvm", "-o", "{ro}/t"],
        ["bench", "--csv", "{ro}/b.csv", "--targets", "pynq-z1"],
    ],
    ids=["convert", "export", "build-pynq", "build-llvm", "bench"],
)
def test_read_only_output_folder_is_one_line(argv, readonly_dir, capsys):
    code, err = _cli([a.replace("{ro}", str(readonly_dir)) for a in argv], capsys)
    assert code == 2
    assert "cannot write" in _one_line_error(err)
    assert list(readonly_dir.iterdir()) == []


def test_argparse_errors_are_one_line_in_the_real_process(tmp_path):
    env = {**os.environ, "CEPD_DEPLOY_HUGEPAGES": "0"}
    argv = [sys.executable, "-m", "cepd_deploy", "bench", "--repeats", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 2 and "--repeats: must be >= 1" in _one_line_error(done.stderr)


def test_cli_cache_root_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    from cepd_deploy.cache import CACHE_ENV

    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    argv = ["build", "resnet20", "--target", "llvm", "--tune-trials", "1", "-o", str(tmp_path / "o")]
    code, err = _cli(argv, capsys)
    assert code == 2 and "is a file" in _one_line_error(err)
    assert not (tmp_path / "o" / "model.so").exists()
