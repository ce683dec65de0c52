"""The bench harness: rows, speedups against the same target's dense row, outputs."""

from __future__ import annotations

import csv
import io
import json
import time

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


# -- batches ------------------------------------------------------------------------------------
def test_batch_runs_every_target_on_the_whole_batch(monkeypatch):
    from cepd_deploy.bench import harness

    seen = []
    real = harness.runner

    def spy(name, plan, threads, workdir, options=None):
        fn = real(name, plan, threads, workdir, options)

        def run(x):
            seen.append((name, plan.input_shape[0], x.shape[0]))
            return fn(x)

        return run

    monkeypatch.setattr(harness, "runner", spy)
    got = run_bench("resnet20", (0.5,), ("torch", "onnxruntime", "pynq-z1"), batch=3, repeats=1, warmup=1,
                    progress=False)  # fmt: skip
    assert seen and {s[1:] for s in seen} == {(3, 3)} and {s[0] for s in seen} == {"torch", "onnxruntime"}
    for r in got:
        assert r.batch == 3 and r.throughput == pytest.approx(3e3 / r.latency_ms)
        assert r.peak_rss_mb is None and r.model_rss_mb is None  # memory is off by default in the API
    # a modelled target runs the batch image after image: the same throughput as at batch 1
    one = {r.model: r for r in run_bench("resnet20", (0.5,), ("pynq-z1",), progress=False)}
    for r in (r for r in got if r.target == "pynq-z1"):
        assert r.latency_ms == pytest.approx(3 * one[r.model].latency_ms, rel=1e-6)
        assert r.throughput == pytest.approx(one[r.model].throughput, rel=1e-6)
    md, text = rep.markdown(got), rep.text_table(got)
    assert "batch of 3 images per run" in text and "images/s" in md
    parsed = list(csv.DictReader(io.StringIO(rep.to_csv(got))))
    assert {p["batch"] for p in parsed} == {"3"} and float(parsed[0]["throughput"]) > 0


def test_paper_figures_only_at_batch_one():
    from cepd_deploy.bench.harness import Variant, _row

    class Plan:
        input_shape = (8, 3, 224, 224)

    v = Variant("cepd461", 0.461, Plan(), 0.461, 0.5)
    row = _row("resnet50", v, "pynq-z1", "modelled", 800.0, {})
    assert row.batch == 8 and row.paper_latency_ms is None and row.paper_speedup is None
    assert row.throughput == pytest.approx(10.0)
    Plan.input_shape = (1, 3, 224, 224)
    assert _row("resnet50", v, "pynq-z1", "modelled", 88.0, {}).paper_latency_ms == pytest.approx(88.21)


def test_bad_batch_is_a_one_line_error(capsys):
    with pytest.raises(CEPDError, match="batch must be a whole number"):
        run_bench("resnet20", (0.5,), ("pynq-z1",), batch=0, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "resnet20", "--targets", "pynq-z1", "--batch", "0"])
    assert exc.value.code == 2 and "--batch" in capsys.readouterr().err


# -- peak memory --------------------------------------------------------------------------------
@pytest.mark.slow
def test_peak_memory_of_each_runtime_and_model():
    """One process per (runtime, model): the CEPD model (fewer weights) needs less than dense."""
    got = run_bench("vgg16_cifar", (0.3,), ("onnxruntime", "torch"), repeats=1, warmup=1, progress=False,
                    memory=True)  # fmt: skip
    rows = {(r.target, r.flops_remaining < 1): r for r in got}
    dense, cepd = rows[("onnxruntime", False)], rows[("onnxruntime", True)]
    for r in (dense, cepd):
        m = r.details["memory"]
        assert m["method"].startswith("VmHWM") and r.peak_rss_mb == m["peak_rss_mb"] > r.model_rss_mb > 0
        assert m["base_rss_mb"] + r.model_rss_mb == pytest.approx(r.peak_rss_mb, abs=0.2)
    # vgg16_cifar holds 15M weights (59 MB as float32): the CEPD model keeps a fraction of them
    assert cepd.params_remaining < 0.6
    assert dense.model_rss_mb - cepd.model_rss_mb > 0.5 * 59 * (1 - cepd.params_remaining)
    torch_row = rows[("torch", False)]  # runs in the benchmark's own process: not measured apart
    assert torch_row.peak_rss_mb is None and "own process" in torch_row.details["memory"]["error"]
    assert "peak MB" in rep.text_table(got)


def test_memory_finds_the_artifact_a_runner_left(tmp_path):
    from cepd_deploy.bench.memory import artifact, measure

    assert artifact(tmp_path) is None
    (tmp_path / "onnxruntime-x").mkdir()
    (tmp_path / "onnxruntime-x" / "m.onnx").write_bytes(b"")
    assert artifact(tmp_path) == ("onnx", tmp_path / "onnxruntime-x" / "m.onnx")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    assert artifact(tmp_path) == ("tvm", tmp_path / "b")
    # a broken artifact: the figure is missing with a one-line reason, the bench goes on
    bad = measure("onnxruntime", tmp_path / "onnxruntime-x", (1, 3, 32, 32), 1)
    assert set(bad) == {"error"} and "\n" not in bad["error"]


def test_cli_measures_memory_unless_told_not_to(tmp_path):
    out = tmp_path / "b.json"
    args = ["bench", "--model", "resnet20", "--flops-remaining", "0.5", "--targets", "torch",
            "--repeats", "1", "--warmup", "0", "--quiet", "--json", str(out)]  # fmt: skip
    assert main(args) == 0  # torch runs in bench's own process: the row says why it has no figure
    assert all("own process" in r["details"]["memory"]["error"] for r in json.loads(out.read_text())["rows"])
    assert main([*args, "--no-memory"]) == 0
    assert all("memory" not in r["details"] for r in json.loads(out.read_text())["rows"])


def test_each_timed_run_follows_a_run_of_the_same_model(monkeypatch):
    """The steady state of back-to-back runs: a fake runtime that is slow (50 ms) whenever another
    model ran just before, and instant otherwise, is timed as instant."""
    import cepd_deploy.bench.harness as harness

    last = [None]

    def fake_runner(target, plan, threads, workdir, options=None):
        def run(x, label=workdir.name):
            if last[0] != label:
                time.sleep(0.05)
            last[0] = label

        return run

    monkeypatch.setattr(harness, "runner", fake_runner)
    rows = harness.run_bench("resnet20", (0.5,), ("onnxruntime",), repeats=3, warmup=1, progress=False)
    assert len(rows) == 2
    assert all(r.latency_ms < 25 for r in rows), [r.latency_ms for r in rows]
