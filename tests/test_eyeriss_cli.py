"""``cepd-deploy simulate``: table, --json, --plot, presets and spec files, user errors."""

from __future__ import annotations

import json

import pytest

from cepd_deploy.cli import main
from cepd_deploy.targets.eyeriss.spec import spec_path


def test_table_output(capsys):
    assert main(["simulate", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "eyeriss_v1: 12x14 PEs at 200 MHz" in out and "total:" in out


def test_json_with_options(capsys, tmp_path):
    spec = tmp_path / "chip.yaml"
    spec.write_text(spec_path("eyeriss_scaled").read_text())
    plot = tmp_path / "r20.png"
    argv = ["simulate", "--target", "eyeriss", "resnet20", "--spec", str(spec), "--batch", "2",
            "--objective", "energy", "--zeros", "0.6", "--json", "--plot", str(plot)]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["spec"] == "eyeriss_scaled" and doc["batch"] == 2 and doc["objective"] == "energy"
    assert doc["input_shape"] == [2, 3, 32, 32]
    assert {"latency_ms", "energy", "dram_bytes", "utilisation"} <= set(doc["totals"])
    first = doc["layers"][0]
    assert {"name", "kind", "latency_ms", "active_pes", "dram_bytes", "energy"} <= set(first)
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "resnet20", "--target", "nope"], "unknown target 'nope'"),
        (["simulate", "resnet20", "--target", "onnxruntime"], "onnxruntime"),
        (["simulate", "resnet20", "--spec", "eyeriss_v9"], "unknown Eyeriss spec"),
        (["simulate", "no_such_model"], "is neither a model file"),
        (["simulate", "resnet20", "--plot", "/no/such/dir/x.png"], "output folder does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("cepd-deploy: error:")


def test_bad_numbers_are_rejected_before_any_work(capsys):
    """By the parser (--batch) or by the target's options (--zeros): exit 2, one line."""
    for argv in (["simulate", "resnet20", "--batch", "0"], ["simulate", "resnet20", "--zeros", "1.5"]):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        assert code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
