"""Numerical check of an exported model: onnxruntime vs the Plan reference and the torch model.

Every layer output that exists in both the ONNX graph and the Plan is compared (the ONNX model
is run with those values as extra outputs), plus the final output against the torch model.
Tolerance (DESIGN.md): max abs error <= 1e-4 x max|y| per output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper

from cepd_deploy.plan.ir import Plan
from cepd_deploy.plan.reference import run as run_plan
from cepd_deploy.targets.onnx.graph import value_info
from cepd_deploy.targets.onnx.session import build_session

RTOL = 1e-4


@dataclass(frozen=True)
class Check:
    """One compared output: ``value`` from onnxruntime against ``against``."""

    value: str
    against: str  # "plan" or "torch"
    max_abs_error: float
    max_abs_ref: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= RTOL * max(self.max_abs_ref, 1e-30)

    def as_dict(self) -> dict:
        return {"value": self.value, "against": self.against, "max_abs_error": self.max_abs_error,
                "max_abs_ref": self.max_abs_ref, "ok": self.ok}  # fmt: skip


def _layer_outputs(plan: Plan, model: onnx.ModelProto) -> list[str]:
    """Plan values worth comparing: each layer's (and each other op's) output, if in the graph."""
    produced = {o for n in model.graph.node for o in n.output}
    last = {}
    for n in plan.nodes:
        last[n.layer or n.name] = n.output
    return [v for v in last.values() if v in produced and v != plan.output]


def compare(
    plan: Plan,
    model: onnx.ModelProto,
    torch_model: torch.nn.Module | None = None,
    *,
    samples: int = 1,
    seed: int = 0,
    threads: int | None = None,
    native: bool = False,
) -> list[Check]:
    """Run ``model`` in onnxruntime on random inputs; one :class:`Check` per compared output
    (the worst over ``samples`` inputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    shapes = {n.output: n.out_shape for n in plan.nodes}
    inner = _layer_outputs(plan, model)
    # probe copies (not the values themselves) become outputs: a value that is also a graph
    # output can block onnxruntime's Conv+Add fusion from rewiring it (load fails)
    probe.graph.node.extend(helper.make_node("Identity", [v], [f"probe/{v}"]) for v in inner)
    probe.graph.output.extend(value_info(f"probe/{v}", shapes[v]) for v in inner)
    sess = build_session(probe, threads, native=native)
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    worst: dict[tuple[str, str], tuple[float, float]] = {}

    def note(value, against, got, ref):
        err, mag = float(np.abs(got - ref).max()), float(np.abs(ref).max())
        old = worst.get((value, against))
        if old is None or err / max(mag, 1e-30) > old[0] / max(old[1], 1e-30):
            worst[(value, against)] = (err, mag)

    for _ in range(samples):
        x = rng.standard_normal(plan.input_shape).astype(np.float32)
        outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))
        env = run_plan(plan, x, keep=True)
        final = outs[names[0]]
        note(plan.output, "plan", final, env[plan.output].numpy())
        for v in inner:
            note(v, "plan", outs[f"probe/{v}"], env[v].numpy())
        if torch_model is not None:
            with torch.no_grad():
                ref = torch_model.eval()(torch.from_numpy(x)).numpy()
            note(plan.output, "torch", final, ref)
    return [Check(v, a, e, m) for (v, a), (e, m) in worst.items()]


def summary(checks: list[Check]) -> dict:
    """Headline of a verification: worst relative error, pass/fail, the final-output rows."""
    worst = max(checks, key=lambda c: c.max_abs_error / max(c.max_abs_ref, 1e-30))
    return {
        "ok": all(c.ok for c in checks),
        "outputs_checked": len(checks),
        "worst": worst.as_dict(),
        "tolerance": f"max abs error <= {RTOL:g} x max|y|",
    }
