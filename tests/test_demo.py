"""The demo's steps on the small model (the ResNet-50 table step is the bench harness, tested in
test_bench.py with a small model)."""

from __future__ import annotations

import json

from cepd_deploy.demo import SMALL, DemoContext, steps


def test_demo_steps_on_the_small_model(tmp_path):
    ctx = DemoContext(tmp_path)
    todo = [s for s in steps() if s.__name__ != "_bench_step"]
    assert len(todo) == len(steps()) - 1
    lines = [step(ctx) for step in todo]
    assert "csim bit-exact" in lines[3]
    for name in (f"{SMALL}.pt", f"{SMALL}.onnx", f"{SMALL}_fused.onnx", "inspect.json",
                 f"{SMALL}.eyeriss.json", "pynq_z1/Makefile", "pynq_z1/driver.py"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "inspect.json").read_text())
    assert abs(report[SMALL]["totals"]["flops_remaining"] - 0.5) <= 0.01
    assert "resnet20_cepd50" in ctx.tables[0]
