"""The machine in every timing table: ``bench.machine``, the bench outputs, the demo's table, the
plot's title and paper markers, and the committed docs/*.json tables."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from cepd_deploy import native
from cepd_deploy.bench import machine as mach
from cepd_deploy.bench import report as rep
from cepd_deploy.bench.harness import Row
from cepd_deploy.bench.paper import display_name, paper_latency, paper_speedup

DOCS = Path(__file__).resolve().parents[1] / "docs"
FIELDS = {
    "cpu",
    "arch",
    "cores",
    "simd",
    "kernel_isa",
    "kernel_isa_label",
    "kernel_isa_source",
    "threads",
    "load_avg",
}


def test_machine_info_fields_are_present_and_sane():
    info = mach.machine_info(threads=3)
    assert set(info) == FIELDS
    assert isinstance(info["cpu"], str) and info["cpu"].strip() and info["cpu"] != "unknown"
    assert info["cores"] >= 1 and info["threads"] == 3
    assert info["kernel_isa"] in native.ISAS
    assert info["kernel_isa_label"] in ("AVX-512", "AVX2", "SSE (generic build)", "generic")
    assert set(info["simd"]) <= set(mach.SIMD_FLAGS)
    load = info["load_avg"]
    assert len(load) == 3 and all(isinstance(v, float) and v >= 0 for v in load)
    json.dumps(info)  # goes into JSON outputs as is


def test_kernel_isa_is_the_kernels_choice_and_matches_the_python_rule():
    info = mach.machine_info()
    flags = mach.cpu_flags()
    assert flags, "/proc/cpuinfo has no flags line"
    assert info["kernel_isa"] == mach.kernel_isa_for(flags)
    if native.available():
        assert info["kernel_isa_source"] == "kernel library" and info["kernel_isa"] == native.isa()
    assert ("avx512f" in info["simd"]) == ("avx512f" in flags)


def test_the_rule_is_the_kernels_dispatch():
    assert mach.kernel_isa_for(frozenset({"avx512f", "avx512vl", "avx2", "fma"})) == "avx512f"
    assert mach.kernel_isa_for(frozenset({"avx512f", "avx2", "fma"})) == "avx2"  # no avx512vl
    assert mach.kernel_isa_for(frozenset({"avx2", "fma", "sse2"})) == "avx2"
    assert mach.kernel_isa_for(frozenset({"avx2", "sse2"})) == "scalar"  # no fma
    assert mach.kernel_isa_for(frozenset()) == "scalar"


def test_without_the_kernel_library_the_choice_comes_from_the_flags(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    info = mach.machine_info(2)
    assert info["kernel_isa"] == mach.kernel_isa_for(mach.cpu_flags())
    assert info["kernel_isa_source"].startswith("cpu flags")


def test_describe_is_one_line_with_cpu_build_threads_and_load():
    info = mach.machine_info(2) | {
        "cpu": "Some CPU",
        "cores": 2,
        "simd": ["avx2", "fma"],
        "kernel_isa": "avx2",
        "kernel_isa_label": "AVX2",
        "load_avg": [1.5, 0.5, 0.25],
    }
    line = mach.describe(info)
    assert "\n" not in line
    assert (
        line
        == "Some CPU (2 cores; AVX2, no AVX-512), kernel build AVX2, 2 threads, load average 1.5 0.5 0.25"
    )
    info |= {
        "simd": ["avx512f", "avx2"],
        "kernel_isa": "avx512f",
        "kernel_isa_label": "AVX-512",
        "threads": 1,
    }
    assert "(2 cores; AVX-512), kernel build AVX-512, 1 thread," in mach.describe(info)


# -- the bench outputs ---------------------------------------------------------------------------
def _rows(arch: str, machine: dict | None = None) -> list[Row]:
    machine = machine or mach.machine_info(2)
    rows = []
    for f, ms in ((1.0, 10.0), (0.5, 6.0)):
        label = "dense" if f == 1.0 else "cepd500"
        rows.append(
            Row(f"{arch}-{label}", f, "torch", "measured", ms, 10.0 / ms, 10.0 / ms * f, machine=machine)
        )
        rows.append(
            Row(
                f"{arch}-{label}",
                f,
                "eyeriss",
                "modelled",
                ms / 2,
                10.0 / ms,
                10.0 / ms * f,
                details={"spec": "eyeriss_scaled"},
            )
        )
    return rows


def test_csv_json_text_and_markdown_carry_the_machine():
    info = mach.machine_info(2)
    rows = _rows("resnet20", info)
    parsed = list(csv.DictReader(io.StringIO(rep.to_csv(rows))))
    measured = [p for p in parsed if p["kind"] == "measured"]
    assert len(measured) == 2
    for p in measured:
        assert p["machine_cpu"] == info["cpu"] and p["machine_kernel_isa"] == info["kernel_isa"]
        assert p["machine_threads"] == "2" and len(p["machine_load_avg"].split()) == 3
    assert all(p["machine_cpu"] == "" for p in parsed if p["kind"] == "modelled")
    payload = json.loads(json.dumps(rep.to_payload(rows)))
    assert payload["model"] == "resnet20" and payload["machine"] == info
    assert all(r["machine"] == info for r in payload["rows"] if r["kind"] == "measured")
    text = rep.text_table(rows).splitlines()
    assert text[0] == f"measured on: {mach.describe(info)}"
    assert "eyeriss rows: the eyeriss_scaled preset" in text
    assert f"Measured on: {mach.describe(info)}." in rep.markdown(rows)


def test_bench_rows_record_the_machine(tmp_path, capsys):
    from cepd_deploy.bench import run_bench
    from cepd_deploy.cli import main

    rows = run_bench("resnet20", (0.5,), ("torch", "pynq-z1"), threads=1, repeats=1, warmup=1, progress=False)
    measured = [r for r in rows if r.kind == "measured"]
    assert measured and all(r.machine and r.machine["threads"] == 1 for r in measured)
    assert all(r.machine is None for r in rows if r.kind == "modelled")
    out, csv_out = tmp_path / "b.json", tmp_path / "b.csv"
    args = [
        "bench",
        "--model",
        "resnet20",
        "--flops-remaining",
        "0.5",
        "--targets",
        "torch",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--quiet",
        "--json",
        str(out),
        "--csv",
        str(csv_out),
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("measured on: ")
    data = json.loads(out.read_text())
    assert set(data["machine"]) == FIELDS and data["machine"]["threads"] == 1
    assert all(r["machine"] == data["machine"] for r in data["rows"])
    parsed = list(csv.DictReader(io.StringIO(csv_out.read_text())))
    assert all(p["machine_cpu"] == data["machine"]["cpu"] and p["machine_threads"] == "1" for p in parsed)


# -- the plot: title from the model, paper markers only for the paper's model --------------------
def _figure_facts(rows, arch=None) -> tuple[str, list[str]]:
    import matplotlib.pyplot as plt

    fig = rep.figure(rows, arch)
    try:
        ax = fig.axes[0]
        return ax.get_title(), [line.get_label() for line in ax.get_lines()]
    finally:
        plt.close(fig)


def test_the_plot_of_resnet20_is_titled_resnet20_without_paper_markers():
    title, labels = _figure_facts(_rows("resnet20"))
    assert "ResNet-50" not in title and title.startswith("ResNet-20")
    assert not [x for x in labels if x.startswith("paper")]
    assert rep.paper_markers("resnet20") == {}
    assert (
        paper_latency("pynq-z1", 0.461, "resnet20") is None
        and paper_speedup("eyeriss", 0.371, "resnet20") is None
    )


def test_the_plot_of_resnet50_has_the_papers_markers():
    title, labels = _figure_facts(_rows("resnet50"))
    assert title.startswith("ResNet-50")
    assert {"paper: pynq-z1", "paper: eyeriss"} <= set(labels)
    assert display_name("densenet40") == "densenet40"


def test_bench_rows_of_another_model_get_no_paper_figures():
    from cepd_deploy.bench.harness import Variant, _row

    v = Variant("cepd461", 0.461, None, 0.461, 0.5)
    assert _row("resnet20", v, "pynq-z1", "modelled", 1.0, {}).paper_latency_ms is None
    assert _row("resnet50", v, "pynq-z1", "modelled", 1.0, {}).paper_latency_ms == pytest.approx(88.21)


# -- the demo's table ----------------------------------------------------------------------------
def test_the_demo_says_which_eyeriss_preset_its_table_uses(tmp_path, monkeypatch):
    from cepd_deploy import demo
    from cepd_deploy.bench import harness

    seen = {}

    def fake_run_bench(arch, points, targets, **kw):
        seen.update(kw)
        return _rows(arch)

    monkeypatch.setattr(harness, "run_bench", fake_run_bench)
    ctx = demo.DemoContext(tmp_path)
    line = demo._bench_step(ctx)
    assert seen["eyeriss_spec"] == demo.EYERISS_TABLE == "eyeriss_scaled"
    assert "eyeriss_scaled preset" in line
    table = ctx.tables[-1]
    assert "eyeriss rows: the eyeriss_scaled preset" in table and "measured on: " in table
    assert json.loads((tmp_path / "latency.json").read_text())["machine"]["cpu"]


# -- the committed tables ------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(DOCS.glob("*.json")), ids=lambda p: p.name)
def test_committed_tables_name_their_machine(path):
    data = json.loads(path.read_text())
    m = data["machine"]
    assert m["kernel_isa"] == "avx512f" and m["threads"] == 2 and "EPYC" in m["cpu"]
    assert m["recorded"].startswith("afterwards") and m["load_avg"] is None  # labelled, nothing invented
    assert "[afterwards" in mach.describe(m)
