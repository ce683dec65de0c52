"""The repository stands alone: no file refers to planning material outside it, names a host to
download from, or depends on data that only exists beside a particular checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Vivado's identifiers are vendor-qualified names, not addresses: board parts and IP VLNVs
VIVADO_IDS = re.compile(r"\b(www\.digilentinc\.com:pynq-z1:part0|xilinx\.com:(ip|bd_rule):)")
#: the planning folder beside a checkout (spelled in parts so that this file does not name it)
OUTSIDE = re.compile(r"\.\./" + "shared" + r"\b|\b" + "shared" + r"/reference\b|README_" + "SECTION")
URL = re.compile(r"\b(https?|ftp)://|\bwww\.[a-z0-9-]+\.[a-z]{2,}", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("the hygiene checks need a git checkout of the project")
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.suffix not in {".png", ".so", ".bin"}:
            files.append(path)
    return files


def test_no_file_refers_outside_the_repository():
    bad = [str(p.relative_to(ROOT)) for p in tracked_text_files()
           if re.search(OUTSIDE, p.read_text(errors="replace"))]
    assert bad == []


def test_no_urls_or_hosts():
    bad = []
    for path in tracked_text_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if URL.search(VIVADO_IDS.sub("", line)):
                bad.append(f"{path.relative_to(ROOT)}:{i}")
    assert bad == []


def test_the_build_downloads_nothing():
    text = (ROOT / "setup.py").read_text()
    assert "urllib" not in text and "http" not in text


def test_demo_output_and_caches_are_ignored():
    """Running the documented commands in the checkout leaves git status clean."""
    probe = ["cepd-demo/x.onnx", "analyze-sequence.png", ".hypothesis/x", "build/x"]
    out = subprocess.run(["git", "check-ignore", *probe], cwd=ROOT, capture_output=True, text=True).stdout
    assert sorted(out.split()) == sorted(probe)
