"""``cepd-deploy doctor``: what was built and found, as text and JSON; missing parts reported, exit 0."""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cepd_deploy.cli import doctor, main

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"cepd_deploy", "python", "cpu", "build_record", "kernel", "ort_library", "onnxruntime", "torch",
        "onnx", "tvm", "hls4ml", "cxx"}  # fmt: skip
LABELS = ["cepd-deploy", "python", "cpu", "native kernel", "custom-op lib", "onnxruntime", "torch", "onnx",
          "tvm", "hls4ml", "c++ (csim)"]  # fmt: skip


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def report() -> dict:
    """``doctor --json`` in a fresh interpreter, with the heavy modules it loaded."""
    code = ("import json, sys; from cepd_deploy.cli import main; rc = main(['doctor', '--json']); "
            "loaded = [m for m in ('torch', 'tvm', 'hls4ml') if m in sys.modules]; "
            "print(json.dumps({'rc': rc, 'loaded': loaded}), file=sys.stderr)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    data["_process"] = json.loads(done.stderr.strip().splitlines()[-1])
    return data


def test_json_reports_this_machine(report):
    assert report.pop("_process") == {"rc": 0, "loaded": []}  # exit 0; torch and TVM were not imported
    assert set(report) == KEYS
    assert report["python"]["version"] == platform.python_version()
    cpu = report["cpu"]
    assert cpu["cores"] == os.cpu_count() and 1 <= cpu["usable_cores"] <= cpu["cores"]
    if platform.machine() == "x86_64":
        flags = _cpu_flags()
        assert cpu["features"]["avx2"] == ("avx2" in flags) and cpu["features"]["avx512f"] == (
            "avx512f" in flags
        )
        assert "neon" not in cpu["features"]  # another architecture's feature is not listed as missing
    for dist, key in [("onnxruntime", "onnxruntime"), ("torch", "torch"), ("onnx", "onnx"),
                      ("apache-tvm", "tvm"), ("hls4ml", "hls4ml")]:  # fmt: skip
        assert report[key]["version"] == _version(dist)
    assert report["tvm"]["imports"] is None and report["torch"]["imports"] is None  # not imported by default
    cxx = report["cxx"]
    assert cxx["path"] == shutil.which(os.environ.get("CXX", "g++"))
    assert (cxx["version"] is not None) == (cxx["path"] is not None)


def test_json_reports_the_native_libraries(report):
    from cepd_deploy import native
    from cepd_deploy.targets.onnx import ort_library as ol

    k, lib = report["kernel"], report["ort_library"]
    assert k["built"] == native.available()
    if k["built"]:
        assert k["loads"] and k["error"] is None
        assert k["isa"] == native.isa() and k["cpu_isa"] == native.isa()  # a fresh process: cpuid's pick
        if platform.machine() == "x86_64":
            assert k["isa_builds"] == list(native.ISAS)
            flags = _cpu_flags()
            best = (
                "avx512f"
                if {"avx512f", "avx512vl"} <= flags
                else "avx2"
                if {"avx2", "fma"} <= flags
                else "scalar"
            )
            assert k["cpu_isa"] == best
    else:
        assert k["error"].startswith("not built")
    assert lib["built"] == ol.available()
    if lib["built"]:
        import onnxruntime

        assert lib["registers"] and lib["error"] is None
        assert lib["onnxruntime_seen"] == onnxruntime.__version__ and lib["api_version"] == 21
    else:
        assert lib["error"].startswith("not built")


def test_json_finds_the_csim_headers(report):
    from cepd_deploy.errors import CEPDError
    from cepd_deploy.targets.pynq_z1.csim import ap_types_dir

    try:
        expected = str(ap_types_dir())
    except CEPDError:
        expected = None
    assert report["hls4ml"]["ap_types"] == expected


def test_text_output(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if not line.startswith(" ")]
    assert [r[:15].strip() for r in rows] == LABELS
    assert f"python          {platform.python_version()} " in out
    data = doctor.collect()
    if data["ort_library"]["registers"]:
        assert f"registers into onnxruntime {data['onnxruntime']['version']} (C API 21" in out
    if data["kernel"]["loads"]:
        assert f"cpuid picks {data['kernel']['cpu_isa']}; {data['kernel']['threads']} threads" in out


def test_missing_parts_are_reported(monkeypatch, tmp_path, capsys):
    why = "no working C++17 compiler (c++: not found)"
    record = {"extensions": {n: {"built": False, "error": why} for n in ("cepd_deploy._ttsparse",
                                                                          "cepd_deploy._ort_cepd")},
              "ort_header": "kernels/ort_abi.h", "compiler": "c++"}  # fmt: skip
    (tmp_path / "rec.json").write_text(json.dumps(record))
    monkeypatch.setattr(doctor, "RECORD", tmp_path / "rec.json")
    monkeypatch.setattr(doctor, "extension_path", lambda stem: None)
    gone = {"hls4ml", "tvm", "apache-tvm", "apache-tvm-ffi"}  # modules and distributions
    find_spec, version = doctor.importlib.util.find_spec, doctor._version
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda m: None if m in gone else find_spec(m))
    monkeypatch.setattr(doctor, "_version", lambda d: None if d in gone else version(d))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"native kernel   not built: {why}" in out
    assert f"custom-op lib   not built: {why}" in out
    assert "tvm             not installed (pip install cepd-deploy[tvm])" in out
    assert "hls4ml          not installed (pip install cepd-deploy[fpga])" in out
    assert "c++ (csim)      no-such-compiler-here not found (set CXX)" in out
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kernel"]["built"] is False and data["kernel"]["error"] == f"not built: {why}"
    assert data["hls4ml"] == {"version": None, "ap_types": None} and data["cxx"]["path"] is None


def test_setup_reports_a_missing_compiler(tmp_path, monkeypatch, capsys):
    """Without a C++17 compiler the build goes on, warns on stderr, removes stale libraries and
    records why; doctor then shows the reason."""
    build = tmp_path / "lib"
    stale = build / "cepd_deploy" / f"_ttsparse{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    env = dict(os.environ, CC="/nonexistent/cc", CXX="/nonexistent/c++")
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "-b", str(build), "-t", str(tmp_path / "tmp")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("WARNING: cepd-deploy:")]
    assert len(warnings) == 1 and "no working C++17 compiler (/nonexistent/c++" in warnings[0]
    assert not stale.exists()  # no library from an earlier build passes for this one's
    record = json.loads((build / "cepd_deploy" / "_build_record.json").read_text())
    assert {n: e["built"] for n, e in record["extensions"].items()} == {
        "cepd_deploy._ttsparse": False, "cepd_deploy._ort_cepd": False}  # fmt: skip
    monkeypatch.setattr(doctor, "RECORD", build / "cepd_deploy" / "_build_record.json")
    monkeypatch.setattr(doctor, "extension_path", lambda stem: None)
    assert main(["doctor"]) == 0
    assert "native kernel   not built: no working C++17 compiler (/nonexistent/c++" in capsys.readouterr().out
