"""How each target gives a per-image latency: modelled (a cost model of the Plan) or measured
(a callable timed by the harness). One adapter per target name; targets import lazily."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Plan

MODELLED = ("pynq-z1", "eyeriss")
MEASURED = ("onnxruntime", "onnxruntime-fused", "onnxruntime-native", "tvm", "torch")
TARGETS = MODELLED + MEASURED


def modelled_ms(target: str, plan: Plan, *, eyeriss_spec: str = "eyeriss_scaled") -> tuple[float, dict]:
    """(per-image latency in ms, details) from the target's cost model of ``plan``."""
    batch = plan.input_shape[0]
    if target == "eyeriss":
        from cepd_deploy.targets import eyeriss

        result = eyeriss.simulate(plan, eyeriss.load_spec(eyeriss_spec), batch=batch).to_json()
        return result["totals"]["latency_ms"] / batch, {"spec": eyeriss_spec,
                                                         "energy": result["totals"].get("energy")}
    if target == "pynq-z1":
        from cepd_deploy.targets import pynq_z1

        report = pynq_z1.estimate(plan).to_json()
        return report["totals"]["latency_ms"] / batch, {"resources": report.get("resources")}
    raise CEPDError(f"{target!r} is not a modelled target ({', '.join(MODELLED)})")


def runner(target: str, model: nn.Module, plan: Plan, threads: int, workdir: Path) -> Callable:
    """A callable ``f(x: np.ndarray)`` running one inference of ``plan`` on ``target``."""
    if target == "torch":
        torch.set_num_threads(threads)
        model = model.eval()

        def run_torch(x: np.ndarray):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        return run_torch
    if target.startswith("onnxruntime"):
        from cepd_deploy.targets import onnx as ort_target

        fused, native = target != "onnxruntime", target == "onnxruntime-native"
        path = ort_target.export(plan, Path(tempfile.mkdtemp(dir=workdir)) / "m.onnx", fused=fused)
        # fused: the function bodies on stock onnxruntime; native: our TTSparseConv kernel
        sess = ort_target.build_session(path, threads, native=native)
        return lambda x: ort_target.run_session(sess, x)
    if target == "tvm":
        from cepd_deploy.targets import tvm as tvm_target

        out = Path(tempfile.mkdtemp(dir=workdir))
        tvm_target.build(plan, out, target="llvm", threads=threads)
        return tvm_target.load(out, threads=threads)
    raise CEPDError(f"{target!r} is not a measured target ({', '.join(MEASURED)})")

