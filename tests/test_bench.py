"""The bench harness: rows, speedups against the same target's dense row, outputs."""

from __future__ import annotations

import csv
import io
import json

import pytest

from cepd_deploy.bench import report as rep
from cepd_deploy.bench import run_bench
from cepd_deploy.bench.paper import LATENCY_MS, paper_speedup
from cepd_deploy.cli import main
from cepd_deploy.errors import CEPDError


@pytest.fixture(scope="module")
def rows():
    return run_bench("resnet20", (0.6, 0.4), ("torch",), repeats=2, warmup=1, progress=False)


def test_rows_and_speedups(rows):
    assert [r.model for r in rows] == ["resnet20-dense", "resnet20-cepd600", "resnet20-cepd400"]
    dense = rows[0]
    assert dense.speedup == 1.0 and dense.flops_remaining == 1.0
    for r in rows:
        assert r.latency_ms > 0 and r.kind == "measured"
        assert r.speedup == pytest.approx(dense.latency_ms / r.latency_ms)
        assert r.ideal_fraction == pytest.approx(r.speedup * r.flops_remaining)
    assert rows[1].flops_remaining == pytest.approx(0.6, abs=0.01)


def test_paper_reference_numbers():
    assert paper_speedup("pynq-z1", 0.461) == pytest.approx(172.0 / 88.21)
    assert paper_speedup("eyeriss", 0.371) == pytest.approx(38.10 / 15.83)
    assert paper_speedup("torch", 0.461) is None
    assert set(LATENCY_MS) == {1.0, 0.663, 0.461, 0.371}


def test_reports(rows, tmp_path):
    text = rep.text_table(rows)
    assert "resnet20-cepd400" in text and "speedup" in text
    md = rep.markdown(rows)
    assert md.count("\n|") >= len(rows) + 1 and "Measured on: " in md
    assert "Paper figures" not in md  # the paper has figures for ResNet-50 only
    parsed = list(csv.DictReader(io.StringIO(rep.to_csv(rows))))
    assert len(parsed) == len(rows) and float(parsed[0]["speedup"]) == 1.0
    with open(tmp_path / "p.png", "wb") as f:
        rep.plot(rows, f)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments():
    with pytest.raises(CEPDError, match="unknown bench target"):
        run_bench("resnet20", (0.5,), ("nope",), progress=False)
    with pytest.raises(CEPDError, match="FLOPs points"):
        run_bench("resnet20", (1.5,), ("torch",), progress=False)


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--model", "resnet20", "--flops-remaining", "0.5", "--targets", "torch",
            "--repeats", "2", "--warmup", "1", "--quiet", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert {"model", "flops_remaining", "target", "latency_ms", "speedup"} <= set(data["rows"][0])
    capsys.readouterr()
    assert main(args[:-1]) == 0  # --json alone prints the object
    assert json.loads(capsys.readouterr().out)["rows"][1]["target"] == "torch"


def test_every_target_gives_a_row():
    """Modelled (pynq-z1, eyeriss) and compiled/measured (onnxruntime, tvm) targets on one Plan."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install cepd-deploy[tvm])")
    targets = ("pynq-z1", "eyeriss", "onnxruntime", "onnxruntime-fused", "onnxruntime-native", "tvm")
    got = run_bench("resnet20", (0.5,), targets, repeats=1, warmup=1, progress=False)
    assert sorted({r.target for r in got}) == sorted(targets)
    for r in got:
        assert r.latency_ms > 0
    modelled = {r.target: r for r in got if r.kind == "modelled" and r.flops_remaining < 1}
    assert modelled["pynq-z1"].speedup > 1 and modelled["eyeriss"].speedup > 1  # deterministic models


def test_latency_aware_variants_are_labelled_and_meet_the_target(tmp_path, monkeypatch):
    monkeypatch.setenv("CEPD_DEPLOY_CACHE", str(tmp_path))
    got = run_bench("resnet20", (0.7,), ("onnxruntime",), repeats=1, warmup=1, progress=False,
                    allocation="ort-latency", threads=1)  # fmt: skip
    cepd = next(r for r in got if r.flops_remaining < 1)
    assert cepd.model == "resnet20-cepd700-lat" and cepd.flops_remaining == pytest.approx(0.7, abs=0.01)
    with pytest.raises(CEPDError, match="unknown allocation"):
        run_bench("resnet20", (0.7,), ("onnxruntime",), repeats=1, progress=False, allocation="nope")


def test_bench_takes_a_model_file(tmp_path):
    """A CEPD model file is benched against the dense zoo architecture it records."""
    import cepd_deploy as cd
    from cepd_deploy.bench import run_bench

    path = cd.save(cd.convert(cd.build_model("resnet20"), flops_remaining=0.5), tmp_path / "r20.pt")
    rows = run_bench(str(path), targets=("pynq-z1",), progress=False)
    assert [r.model for r in rows] == ["r20-dense", "r20-cepd"]
    assert rows[1].flops_remaining == pytest.approx(0.5, abs=0.011) and rows[1].speedup > 1
