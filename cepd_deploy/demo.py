"""The demo: the main job on embedded defaults, as a list of steps writing into one folder.

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


def steps() -> list[Callable[[DemoContext], str]]:
    out = [_convert_step("resnet20_cepd50", "resnet20", 0.5)]
    out += [_convert_step(f"resnet50_cepd{round(f * 1000)}", "resnet50", f) for f in PAPER_POINTS]
    return out + [_inspect_step]


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
