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


@dataclass
class DemoContext:
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
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.cost import totals
    from cepd_deploy.plan.lower import lower
    from cepd_deploy.plan.report import format_table, layer_rows

    rows, report = [], {}
    for label, path in ctx.models.items():
        model, shape, _ = resolve(str(path))
        plan = lower(model, shape)
        t = totals(plan)
        report[label] = {"totals": t, "layers": layer_rows(plan)}
        (ctx.out / f"{label}.plan.txt").write_text(plan.summary() + "\n")
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
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.lower import lower
    from cepd_deploy.targets import onnx as ort_target
    from cepd_deploy.targets.onnx.verify import compare, summary

    model, shape, _ = resolve(str(ctx.models[SMALL]))
    plan = lower(model, shape)
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
    from cepd_deploy.targets import pynq_z1

    r = pynq_z1.build(str(ctx.models[SMALL]), ctx.out / "pynq_z1", csim=True)
    c = r["csim"]
    if not c["bit_exact"]:
        raise RuntimeError("PYNQ-Z1 C-simulation is not bit-exact with the fixed-point reference")
    return (f"PYNQ-Z1 project in pynq_z1/: csim bit-exact, max abs err vs float "
            f"{c['max_abs_err_vs_float']:.1e}, modelled {r['totals']['latency_ms']:.2f} ms/image")


def _eyeriss_step(ctx: DemoContext) -> str:
    """Eyeriss simulation"""
    import json as _json

    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.lower import lower
    from cepd_deploy.targets import eyeriss

    model, shape, _ = resolve(str(ctx.models[SMALL]))
    result = eyeriss.simulate(lower(model, shape), eyeriss.load_spec("eyeriss_v1")).to_json()
    (ctx.out / f"{SMALL}.eyeriss.json").write_text(_json.dumps(result, indent=1))
    t = result["totals"]
    return f"Eyeriss v1 simulation of {SMALL}: {t['latency_ms']:.3f} ms/image -> {SMALL}.eyeriss.json"


def _bench_step(ctx: DemoContext) -> str:
    """ResNet-50 latency table"""
    from cepd_deploy.bench import report as rep
    from cepd_deploy.bench import run_bench

    rows = run_bench("resnet50", PAPER_POINTS, ("pynq-z1", "eyeriss", "onnxruntime", "onnxruntime-fused",
                     "torch"), repeats=7, warmup=2, progress=False)  # fmt: skip
    payload = {"model": "resnet50", "rows": [r.to_json() for r in rows]}
    (ctx.out / "latency.json").write_text(json.dumps(payload, indent=1))
    (ctx.out / "latency.csv").write_text(rep.to_csv(rows))
    (ctx.out / "latency.md").write_text(rep.markdown(rows))
    with open(ctx.out / "latency.png", "wb") as f:
        rep.plot(rows, f)
    ctx.tables.append(rep.text_table(rows))
    return "ResNet-50 latency table -> latency.{json,csv,md,png}"


def steps() -> list[Callable[[DemoContext], str]]:
    return [_convert_step(SMALL, "resnet20", 0.5), _inspect_step, _export_step, _pynq_step,
            _eyeriss_step, _bench_step]  # fmt: skip


def run_demo(out: Path, *, quiet: bool = False) -> tuple[Path, list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out)
    lines = []
    todo = steps()
    with tqdm(todo, desc="demo", unit="step", disable=quiet) as bar:
        for step in bar:
            bar.set_postfix_str(step.__doc__ or step.__name__)
            lines.append(step(ctx))
    return out, lines + ctx.tables
