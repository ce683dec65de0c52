"""Build a PYNQ-Z1 project from a model: lower, calibrate, compile, render, optionally C-simulate.

>>> result = build("resnet20", "build/", csim=True)     # doctest: +SKIP
>>> result["csim"]["bit_exact"]                        # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Plan
from cepd_deploy.targets.pynq_z1 import fxp
from cepd_deploy.targets.pynq_z1.config import EngineConfig, load_board, make_config
from cepd_deploy.targets.pynq_z1.fixed import dequantize, quantize
from cepd_deploy.targets.pynq_z1.model import check_fit, resources, summarise
from cepd_deploy.targets.pynq_z1.program import MAGIC, compile_program
from cepd_deploy.targets.pynq_z1.render import project_context, render_project, render_readme

MARKER = ".cepd-pynq-z1"  # marks a folder this builder made (and may replace)


def tolerance(bits: int) -> float:
    """The stated bound on max |fixed - float| relative to max |float output|."""
    return min(0.5, 2.0 ** (10 - bits))


def _float_outputs(plan, images: np.ndarray) -> np.ndarray:
    from cepd_deploy.plan.reference import run

    return np.concatenate([run(plan, torch.from_numpy(x[None])).numpy() for x in images])


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise CEPDError(f"output folder {out} exists and was not made by cepd-deploy build; choose another")
    if not out.parent.is_dir():
        raise CEPDError(f"output folder's parent does not exist: {out.parent}")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished project into place (the old one is removed only after success)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build(
    model: str | nn.Module | Plan,
    out: str | Path,
    *,
    input_shape: tuple[int, int, int] | None = None,
    config: EngineConfig | dict | None = None,
    bits: int | None = None,
    clock_mhz: float | None = None,
    csim: bool = False,
    calib: int = 8,
    golden: int = 4,
    seed: int = 0,
    label: str | None = None,
) -> dict:
    """Generate the project in ``out`` and return the figures ``--json`` prints. ``model``: a
    model file or zoo name, an nn.Module (with ``input_shape``), or a Plan lowered with batch 1."""
    from cepd_deploy.model.format import resolve
    from cepd_deploy.plan.lower import lower

    out = Path(out)
    _prepare_out(out)
    net = plan = None
    if isinstance(model, Plan):
        plan, shape, name = model, tuple(model.input_shape), "plan"
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise CEPDError("an nn.Module needs input_shape=(C, H, W)")
        net, shape, name = model.eval(), (1, *input_shape), type(model).__name__
    else:
        net, shape, name = resolve(model, input_shape)
        shape = (1, *tuple(shape)[-3:])
    label = label or name
    cfg = make_config(config, bits=bits, clock_mhz=clock_mhz)
    board = load_board()
    res = resources(cfg)
    check_fit(res, board)
    if calib < 1 or golden < 1:
        raise CEPDError("need at least one calibration sample and one golden image")
    plan = plan if plan is not None else lower(net, shape)
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal((calib, *shape[1:])).astype(np.float32)
    images = rng.standard_normal((golden, *shape[1:])).astype(np.float32)
    q = quantize(plan, samples, cfg.bits)
    program = compile_program(plan, cfg, q)
    report = summarise(program, plan, cfg, board, res).to_json()
    images_q = fxp.quantize_input(q, images).reshape(golden, -1)
    expected = fxp.run(q, images_q.reshape(golden, *shape[1:]), quantized=True).reshape(golden, -1)
    ref = _float_outputs(plan, images).reshape(golden, -1)
    ops = tuple(n.name for n in plan.nodes)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the project is an ordinary folder
    try:
        data = tmp / "data"
        data.mkdir()
        blob = program.blob(q)
        (data / "weights.bin").write_bytes(blob)
        np.save(data / "golden_images.npy", images)
        images_q.astype("<i2").tofile(data / "golden_input.bin")
        expected.astype("<i2").tofile(data / "golden_output.bin")
        np.save(data / "golden_float.npy", ref.astype(np.float32))
        layers = sorted(report["layers"], key=lambda r: -r["ms"])
        ctx = project_context(cfg, label, n_golden=golden, report=report, layers=layers, csim=None)
        ctx["magic_int"] = MAGIC
        render_project(tmp, cfg, ctx, ops)
        sim = _csim(cfg, tmp, images_q, expected, ref, q.output_frac) if csim else None
        if sim is not None:
            render_readme(tmp, ctx | {"csim": sim})
        (tmp / "program.txt").write_text(program.listing())
        result = {
            "target": "pynq-z1",
            "model": label,
            "output": str(out),
            "engine": report["engine"],
            "resources": report["resources"],
            "limits": {k: getattr(board.resources, k) for k in ("dsp", "bram36", "lut", "ff")},
            "totals": report["totals"],
            "csim": sim,
            "fixed_point": {"bits": cfg.bits, "input_frac": q.input_frac, "output_frac": q.output_frac},
            "tiling": program.groups,
            "layers": report["layers"],
        }
        (tmp / "report.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        (tmp / MARKER).write_text("generated by cepd-deploy build --target pynq-z1\n")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _csim(cfg: EngineConfig, proj: Path, images_q, expected, ref, out_frac: int) -> dict:
    """Compile (the engine: cached) and run the project's testbench on the golden images."""
    from cepd_deploy.targets.pynq_z1.csim import build_sim, build_testbench, run_testbench

    t0 = time.perf_counter()
    sim = build_sim(cfg)
    work = proj / "build"
    work.mkdir()
    tb = build_testbench(sim, proj / "tb", work / "tb")
    got = run_testbench(tb, proj / "data" / "weights.bin", images_q, expected.shape[1], work)
    shutil.rmtree(work)
    y = dequantize(got, out_frac)
    err = float(np.abs(y - ref).max())
    tol = tolerance(cfg.bits) * float(np.abs(ref).max())
    return {
        "bit_exact": bool(np.array_equal(got, expected)),
        "mismatches": int((got != expected).sum()),
        "max_abs_err_vs_float": err,
        "max_rel_err_vs_float": err / max(float(np.abs(ref).max()), 1e-30),
        "tolerance": tol,
        "within_tolerance": err <= tol,
        "top1_agreement": float((y.argmax(axis=1) == ref.argmax(axis=1)).mean()),
        "images": int(len(got)),
        "seconds": time.perf_counter() - t0,
    }
