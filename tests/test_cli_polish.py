"""What a user notices first: help texts, messages that name what is valid, output files only
when asked for and with the usual permissions, progress on long steps."""

from __future__ import annotations

import argparse
import ast
import json
import os
import stat
from pathlib import Path

import pytest

from cepd_deploy import targets
from cepd_deploy.cli import main, parser
from cepd_deploy.errors import CEPDError
from cepd_deploy.files import atomic_write
from cepd_deploy.targets import REGISTRY

#: options that name a file or folder the command writes
OUTPUT_OPTIONS = {"png", "plot", "csv", "markdown", "json", "output", "out", "out_dir", "baseline_out"}


def _commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every command and subcommand."""
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(parser()))


@pytest.mark.parametrize("path, p", COMMANDS, ids=[" ".join(c) or "top" for c, _ in COMMANDS])
def test_every_option_has_help_and_help_prints_cleanly(path, p):
    for action in p._actions:
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            assert action.help, f"{' '.join(path)} {action.option_strings or action.dest}: no help"
    text = p.format_help()
    assert "%%" not in text and "%(" not in text


def test_demo_help_shows_percent_signs():
    text = dict(COMMANDS)[("demo",)].format_help().replace("\n", " ")
    assert "(50% FLOPs)" in " ".join(text.split())


@pytest.mark.parametrize("path, p", COMMANDS, ids=[" ".join(c) or "top" for c, _ in COMMANDS])
def test_no_output_file_by_default(path, p):
    """A file is written only where the user named it (demo's documented ./cepd-demo/ aside)."""
    for action in p._actions:
        if action.dest in OUTPUT_OPTIONS and path != ("demo",):
            assert action.default in (None, False), f"{' '.join(path)} --{action.dest}: {action.default!r}"


def test_analyze_sequence_without_png_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "sequence", "resnet20", "--iters", "1"]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "figure" not in capsys.readouterr().out


def _package_names(module: str) -> set[str]:
    """Names a target package defines or imports at its top level (read, not imported: TVM is slow
    to import and sets its thread-pool variables)."""
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cepd-deploy: error: ")
    return err


@pytest.mark.parametrize("target", ["eyeriss", "torch", "tpu"])
def test_build_names_the_targets_that_build(target, capsys, tmp_path):
    err = _error(capsys, ["build", "resnet20", "--target", target, "-o", str(tmp_path / "out")])
    if target == "tpu":
        assert "unknown target 'tpu'" in err and f"targets: {', '.join(REGISTRY)}" in err
    else:
        assert f"targets that build: {', '.join(targets.names('build'))}" in err
    assert "cli(args)" not in err and "implement" not in err
    assert list(tmp_path.iterdir()) == []


def test_build_help_lists_only_targets_that_build():
    p = dict(COMMANDS)[("build",)]
    target_help = next(a.help for a in p._actions if a.dest == "target")
    for name in targets.names("build"):
        assert name in target_help
    for name in set(REGISTRY) - set(targets.names("build")):
        assert name not in target_help.replace("onnxruntime-", "")


@pytest.mark.parametrize("target, says", [("tpu", "unknown target 'tpu'"),
                                          ("torch", "'torch' (runtime) does not estimate")])  # fmt: skip
def test_simulate_lists_only_targets_that_estimate(target, says, capsys):
    err = _error(capsys, ["simulate", "resnet20", "--target", target])
    assert says in err
    if target == "torch":
        assert err.endswith(f"simulate runs: {', '.join(targets.names('estimate'))}")


@pytest.fixture
def umask():
    """Set the process umask for one test (``umask(0o077)``), restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == mode  # what any other program's new file gets
    assert _mode(atomic_write(tmp_path / "a.bin", b"\x00\x01")) == mode
    assert _mode(atomic_write(tmp_path / "b.txt", lambda f: f.write(b"text"))) == mode
    assert (tmp_path / "b.txt").read_text() == "text"


def test_every_writer_gets_the_umask_mode(tmp_path, umask):
    """The model file, the ONNX export, the simulator's figure and the compress log all write
    through :func:`atomic_write`."""
    from cepd_deploy import build_model, lower, save
    from cepd_deploy.compress.log import RunLog
    from cepd_deploy.targets import eyeriss
    from cepd_deploy.targets.eyeriss.report import plot
    from cepd_deploy.targets.onnx import export

    umask(0o022)
    model = build_model("resnet20")
    plan = lower(model, (1, 3, 32, 32))
    out = [save(model, tmp_path / "m.pt"), export(plan, tmp_path / "m.onnx")]
    out.append(plot(eyeriss.simulate(plan, eyeriss.load_spec("eyeriss_v1")), tmp_path / "sim.png"))
    RunLog(tmp_path / "run.log.jsonl", [{"epoch": 0}])
    out.append(tmp_path / "run.log.jsonl")
    assert {p.name: _mode(p) for p in out} == {p.name: 0o644 for p in out}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in out)  # no temporaries


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with pytest.raises(CEPDError, match="output folder does not exist"):
        atomic_write(tmp_path / "no" / "x.bin", b"")


def test_latency_measurement_shows_progress_unless_asked_not_to(tmp_path, capsys):
    """A latency allocation measures for a minute: bars on stderr even when it is not a terminal."""
    from cepd_deploy.frontend.allocation import OrtLatency
    from cepd_deploy.frontend.convert import LayerProbe

    probe = LayerProbe(16, 16, (3, 3), (1, 1), (1, 1), (1, 1), (1, 16, 8, 8), "relu", 2, "o-k-i")
    options = [(probe, None), (probe, (4, 4))]
    OrtLatency(threads=1, repeats=1, cache=tmp_path / "a.json").many(options)
    err = capsys.readouterr().err
    assert "latency: build layer options" in err and "latency: time them" in err
    OrtLatency(threads=1, repeats=1, cache=tmp_path / "b.json", progress=False).many(options)
    assert capsys.readouterr().err == ""


def test_a_library_the_install_could_not_build_is_named_on_every_run(tmp_path, capsys):
    """pip hides a successful build's warnings: the command says it instead, in one line each."""
    from cepd_deploy.cli import _note_missing_native_libraries

    record = tmp_path / "_build_record.json"
    record.write_text(json.dumps({"extensions": {"cepd_deploy._ort_cepd": {"built": False, "error": "no g++"},
                                                 "cepd_deploy._ttsparse": {"built": True, "error": None}}}))
    _note_missing_native_libraries(record)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cepd_deploy._ort_cepd was not built (no g++)" in err[0]
    record.write_text("{not json")
    _note_missing_native_libraries(record)
    assert capsys.readouterr().err == ""
