"""The demo: the main job on embedded defaults, as a list of steps writing into one folder.

A small CEPD model (ResNet-20 at 50% FLOPs) goes through every target: ONNX export with
verification, the PYNQ-Z1 project with C-simulation, Eyeriss simulation; then ResNet-50 at the
paper's FLOPs points gives the per-image latency table (modelled FPGA/ASIC rows, measured CPU
rows) next to the paper's.

Each step is a small function ``step(ctx) -> str`` (a one-line result); ``run_demo`` runs them
with a progress bar and returns the folder and the lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

#: The paper's ResNet-50 operating points (fraction of dense FLOPs remaining).
PAPER_POINTS = (0.663, 0.461, 0.371)
#: Eyeriss presets: the chip for the small model; the chip scaled to the paper's ResNet-50
#: baseline (hw/eyeriss/eyeriss_scaled.yaml) for the latency table, whose eyeriss rows say so
EYERISS_SMALL, EYERISS_TABLE = "eyeriss_v1", "eyeriss_scaled"


@dataclass
class DemoContext:
    """What the steps share: the output folder, the model files written so far and the tables to
    print at the end."""

    out: Path
    models: dict[str, Path] = field(default_factory=dict)  # label -> model file
    tables: list[str] = field(default_factory=list)


def _convert_step(label: str, arch: str, flops: float) -> Callable[[DemoContext], str]:
    def step(ctx: DemoContext) -> str:
        from cepd_deploy import build_model, convert, save

        model = convert(build_model(arch), flops_remaining=flops)
        ctx.models[label] = save(model, ctx.out / f"{label}.pt")
        return f"converted {arch} to {flops:.1%} FLOPs -> {ctx.models[label].name}"

    step.__doc__ = f"convert {arch} @ {flops:.1%}"
    return step


def _inspect_step(ctx: DemoContext) -> str:
    """inspect every model"""
    from cepd_deploy.frontend.load import load_plan
    from cepd_deploy.plan.cost import totals
    from cepd_deploy.plan.report import format_table, layer_rows, summary

    rows, report = [], {}
    for label, path in ctx.models.items():
        plan = load_plan(path).plan
        t = totals(plan)
        report[label] = {"totals": t, "layers": layer_rows(plan)}
        (ctx.out / f"{label}.plan.txt").write_text(summary(plan) + "\n")
        rows.append([label, f"{t['dense_macs'] / 1e6:.1f}", f"{t['macs'] / 1e6:.1f}",
                     f"{t['flops_remaining']:.1%}", f"{t['params'] / 1e6:.2f}M",
                     f"{t['params_remaining']:.1%}"])  # fmt: skip
    (ctx.out / "inspect.json").write_text(json.dumps(report, indent=1))
    headers = ["model", "dense MMACs", "MMACs", "FLOPs left", "params", "params left"]
    ctx.tables.append(format_table(headers, rows, "lrrrrr"))
    return f"inspected {len(rows)} models -> inspect.json, *.plan.txt"


SMALL = "resnet20_cepd50"


def _export_step(ctx: DemoContext) -> str:
    """export ONNX + verify"""
    from cepd_deploy.frontend.load import load_plan
    from cepd_deploy.targets import onnx as ort_target
    from cepd_deploy.targets.onnx.verify import compare, summary

    loaded = load_plan(ctx.models[SMALL])
    plan, model = loaded.plan, loaded.model
    worst = []
    for fused in (False, True):
        path = ort_target.export(plan, ctx.out / f"{SMALL}{'_fused' if fused else ''}.onnx", fused=fused)
        result = summary(compare(plan, ort_target.to_model(plan, fused=fused), model, samples=2))
        if not result["ok"]:
            raise RuntimeError(f"ONNX verification failed for {path.name}: {result['worst']}")
        w = result["worst"]
        worst.append(w["max_abs_error"] / max(w["max_abs_ref"], 1e-30))
    return f"exported {SMALL}.onnx (portable, fused); onnxruntime vs torch/Plan: max rel err {max(worst):.1e}"


def _pynq_step(ctx: DemoContext) -> str:
    """PYNQ-Z1 project + csim"""
    from cepd_deploy import targets
    from cepd_deploy.frontend.load import load_plan

    pynq = targets.get("pynq-z1")
    built = pynq.build(load_plan(ctx.models[SMALL]).plan, ctx.out / "pynq_z1",
                       pynq.options(csim=True, label=SMALL))  # fmt: skip
    if not built.ok:
        raise RuntimeError(f"PYNQ-Z1: {built.problem}")
    r, c = built.figures, built.figures["csim"]
    return (
        f"PYNQ-Z1 project in pynq_z1/: csim bit-exact, max abs err vs float "
        f"{c['max_abs_err_vs_float']:.1e}, modelled {r['totals']['latency_ms']:.2f} ms/image"
    )


def _eyeriss_step(ctx: DemoContext) -> str:
    """Eyeriss simulation"""
    from cepd_deploy import targets
    from cepd_deploy.frontend.load import load_plan

    eyeriss = targets.get("eyeriss")
    est = eyeriss.estimate(load_plan(ctx.models[SMALL]).plan, eyeriss.options(spec=EYERISS_SMALL))
    (ctx.out / f"{SMALL}.eyeriss.json").write_text(json.dumps(est.figures, indent=1))
    t = est.figures["totals"]
    return (
        f"Eyeriss simulation of {SMALL} on the {EYERISS_SMALL} preset (the 168-PE chip): "
        f"{t['latency_ms']:.3f} ms/image -> {SMALL}.eyeriss.json"
    )


def _bench_step(ctx: DemoContext) -> str:
    """ResNet-50 latency table"""
    from cepd_deploy.bench import report as rep
    from cepd_deploy.bench import run_bench

    rows = run_bench("resnet50", PAPER_POINTS, ("pynq-z1", "eyeriss", "onnxruntime", "onnxruntime-fused",
                     "torch"), repeats=7, warmup=2, progress=False, eyeriss_spec=EYERISS_TABLE)  # fmt: skip
    (ctx.out / "latency.json").write_text(json.dumps(rep.to_payload(rows, "resnet50"), indent=1))
    (ctx.out / "latency.csv").write_text(rep.to_csv(rows))
    (ctx.out / "latency.md").write_text(rep.markdown(rows))
    with open(ctx.out / "latency.png", "wb") as f:
        rep.plot(rows, f)
    ctx.tables.append(rep.text_table(rows))
    return (
        f"ResNet-50 latency table (eyeriss rows: the {EYERISS_TABLE} preset, the chip's array scaled "
        f"to the paper's baseline, not {EYERISS_SMALL}) -> latency.{{json,csv,md,png}}"
    )


def steps() -> list[Callable[[DemoContext], str]]:
    """The demo's steps in order: convert, inspect, export, PYNQ-Z1, Eyeriss, the latency table."""
    return [_convert_step(SMALL, "resnet20", 0.5), _inspect_step, _export_step, _pynq_step,
            _eyeriss_step, _bench_step]  # fmt: skip


def run_demo(out: Path, *, quiet: bool = False) -> tuple[Path, list[str]]:
    """Run every step into ``out`` (created); (``out``, the steps' result lines then the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out)
    lines = []
    todo = steps()
    with tqdm(todo, desc="demo", unit="step", disable=quiet) as bar:
        for step in bar:
            bar.set_postfix_str(step.__doc__ or step.__name__)
            lines.append(step(ctx))
    return out, lines + ctx.tables
