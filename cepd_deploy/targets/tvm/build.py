"""Compile a Plan with TVM (Relax VM + our kernels) and write a deployable folder.

``out/model.so`` (``export_library``: the kernels, the VM bytecode and the weights) and
``out/manifest.json`` (what was built, for which target, how it verified).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Plan
from cepd_deploy.targets.tvm import host
from cepd_deploy.targets.tvm.runtime import FORMAT, LIBRARY, MANIFEST, VERSION

Log = Callable[[str], None]


def relax_pipeline():
    """Our Relax passes: everything is already a scheduled call_tir, so no legalize/fuse."""
    from tvm import relax, transform

    t = relax.transform
    return transform.Sequential(
        [
            t.LegalizeOps(),  # only the reshapes remain as ops; they become views below
            t.RewriteDataflowReshape(),
            t.ToNonDataflow(),
            t.RemovePurityChecking(),
            t.CallTIRRewrite(),
            t.StaticPlanBlockMemory(),
            t.LowerAllocTensor(),
            t.KillAfterLastUse(),
            t.LowerRuntimeBuiltin(),
            t.ComputePrimValue(),
            t.VMShapeLower(),
            t.AttachGlobalSymbol(),
        ]
    )


@dataclass
class Compiled:
    """A compiled Plan: the VM executable and what went into it."""

    executable: object
    target: dict
    kernels: int
    tuned: int
    compile_s: float


def compile_plan(
    plan: Plan,
    target: str = "llvm",
    *,
    threads: int | None = None,
    tune_trials: int = 0,
    log: Log | None = None,
) -> Compiled:
    """Lower and compile a Plan. ``tune_trials`` > 0 tunes (or reuses the cache for) every
    distinct contraction kernel and keeps, per kernel, the faster of ours and MetaSchedule's."""
    import tvm

    from cepd_deploy.targets.tvm.lowering import lower_plan

    t0 = time.perf_counter()
    desc = host.describe(target, threads=threads)
    tgt = tvm.target.Target(desc)
    if target == "cuda":
        from cepd_deploy.targets.tvm.gpu import schedule_module

        mod, lw = lower_plan(plan, arch="gpu")
        mod = schedule_module(mod, tgt)
        tuned = 0
    else:
        tuner = None
        if tune_trials > 0:
            from cepd_deploy.targets.tvm.tune import Tuner

            tuner = Tuner(tgt, log=log)
            _, probe = lower_plan(plan, arch="x86", simd=host.simd_lanes(), prim_func=lambda k: k.workload())
            tuner.tune([k for _, k in probe.kernels.values()], tune_trials, probe.uses)
        pick = tuner.best_prim_func if tuner is not None else None
        mod, lw = lower_plan(plan, arch="x86", simd=host.simd_lanes(), prim_func=pick)
        tuned = tuner.used if tuner is not None else 0
    with tgt:
        ex = tvm.compile(mod, target=tgt, relax_pipeline=relax_pipeline())
    return Compiled(ex, desc, len(lw.kernels), tuned, time.perf_counter() - t0)


def as_plan(plan_or_model, input_shape: Sequence[int] | None = None) -> tuple[Plan, str]:
    """A Plan, or a torch model lowered for ``input_shape`` (N, C, H, W) or (C, H, W)."""
    if isinstance(plan_or_model, Plan):
        return plan_or_model, "plan"
    from cepd_deploy.plan.lower import lower

    model = plan_or_model
    arch = (getattr(model, "cepd_arch", None) or {}).get("name")
    shape = input_shape or getattr(model, "cepd_input_shape", None)
    if shape is None and arch:
        from cepd_deploy.model.zoo import input_shape as zoo_shape

        shape = zoo_shape(arch)
    if shape is None:
        raise CEPDError("give input_shape: the model records none")
    shape = tuple(int(s) for s in shape)
    shape = shape if len(shape) == 4 else (1, *shape)
    return lower(model.eval(), shape), arch or type(model).__name__


def build(
    plan_or_model,
    out_dir: str | os.PathLike,
    *,
    target: str = "llvm",
    verify: bool = False,
    tune_trials: int = 0,
    input_shape: Sequence[int] | None = None,
    threads: int | None = None,
    label: str | None = None,
    log: Log | None = None,
) -> dict:
    """Compile a Plan (or a torch model) into ``out_dir``; returns the manifest.

    >>> model = cepd_deploy.convert(build_model("resnet20"), flops_remaining=0.5)  # doctest: +SKIP
    >>> build(model, "out/", verify=True)["verify"]                            # doctest: +SKIP
    """
    if target not in host.KINDS:
        raise CEPDError(f"unknown TVM target {target!r}; valid: {', '.join(host.KINDS)}")
    if tune_trials < 0:
        raise CEPDError(f"--tune-trials must be >= 0, got {tune_trials}")
    if tune_trials and target != "llvm":
        raise CEPDError("tuning is implemented for the llvm (CPU) target only")
    plan, default_label = as_plan(plan_or_model, input_shape)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CEPDError(f"output path exists and is not a folder: {out}")
    if not out.parent.exists():
        raise CEPDError(f"output folder's parent does not exist: {out.parent}")
    compiled = compile_plan(plan, target, threads=threads, tune_trials=tune_trials, log=log)
    from cepd_deploy.plan.cost import totals

    tot = totals(plan)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "label": label or default_label,
        "library": LIBRARY,
        "target": compiled.target,
        "input": plan.input,
        "input_shape": list(plan.input_shape),
        "output_shape": list(plan.output_shape),
        "macs": tot["macs"],
        "flops_remaining": tot["flops_remaining"],
        "ops": len(plan),
        "kernels": compiled.kernels,
        "tuned_kernels": compiled.tuned,
        "tune_trials": tune_trials,
        "compile_s": round(compiled.compile_s, 2),
        "tvm": _tvm_version(),
    }
    out.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tvm-build-", dir=out))
    try:
        _export(compiled.executable, tmp / LIBRARY, target)
        if verify:
            model = None if isinstance(plan_or_model, Plan) else plan_or_model
            manifest["verify"] = verify_build(tmp, plan, manifest, torch_model=model)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        stale = out / MANIFEST  # an old manifest must not describe the new library
        if stale.exists():
            stale.unlink()
        os.replace(tmp / LIBRARY, out / LIBRARY)
        os.replace(tmp / MANIFEST, out / MANIFEST)  # last: its presence marks a complete build
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def verify_build(folder: Path, plan: Plan, manifest: dict, *, torch_model=None, seed: int = 0) -> dict:
    """Run the built library on a random input against the Plan reference (and the torch
    model, when given); raises CEPDError beyond 1e-4 x max|y|."""
    import tvm

    from cepd_deploy.targets.tvm.runtime import load

    kind = manifest["target"]["kind"]
    if kind == "cuda" and not tvm.cuda(0).exist:
        return {"skipped": "no CUDA device on this machine"}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    model = load(folder)
    x = np.random.default_rng(seed).standard_normal(plan.input_shape).astype(np.float32)
    return check_outputs(model(x), plan, x, torch_model=torch_model)


def _export(executable, path: Path, target: str) -> None:
    try:
        executable.export_library(str(path))
    except Exception as exc:  # TVM raises its own error types from the compilers it drives
        if target != "cuda":
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CEPDError(
            "compiling the CUDA kernels needs NVRTC (pip cuda-bindings) or nvcc "
            f"(TVM_CUDA_COMPILE_MODE=nvcc): {first}"
        ) from None


def check_outputs(y: np.ndarray, plan: Plan, x: np.ndarray, *, torch_model=None, tol: float = 1e-4) -> dict:
    """Relative max errors of ``y`` vs the Plan reference (and torch); CEPDError beyond ``tol``."""
    import torch

    from cepd_deploy.plan.reference import run

    refs = {"plan": run(plan, x).numpy()}
    if torch_model is not None:
        with torch.no_grad():
            refs["torch"] = torch_model.eval()(torch.from_numpy(x)).numpy()
    errs = {}
    for name, ref in refs.items():
        errs[name] = float(np.abs(y - ref).max() / max(float(np.abs(ref).max()), 1e-30))
        if not errs[name] <= tol:
            raise CEPDError(
                f"TVM output differs from the {name} reference: max error {errs[name]:.2e} x max|y|"
            )
    return {"max_rel_err": errs, "tol": tol}


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def summary(manifest: dict) -> str:
    """A few lines describing a build (what ``cepd-deploy build --target llvm`` prints)."""
    m, t = manifest, manifest["target"]
    attrs = ", ".join(f"{k}={v}" for k, v in t.items() if k != "kind")
    tuned = f", {m['tuned_kernels']} tuned ({m['tune_trials']} trials each)" if m["tune_trials"] else ""
    lines = [
        f"built {m['label']} for {t['kind']} ({attrs})",
        f"  {m['ops']} Plan ops -> {m['kernels']} kernels{tuned}; {m['macs'] / 1e6:.1f} MMAC "
        f"({m['flops_remaining']:.1%} of dense); compiled in {m['compile_s']} s",
    ]
    v = m.get("verify")
    if v and "max_rel_err" in v:
        errs = ", ".join(f"{k} {e:.1e}" for k, e in v["max_rel_err"].items())
        lines.append(f"  verified: max error x max|y| vs {errs} (tolerance {v['tol']:.0e})")
    elif v:
        lines.append(f"  verify: {v['skipped']}")
    return "\n".join(lines)


def cli(args) -> tuple[dict, str, int]:
    """``cepd-deploy build --target llvm|cuda``: (the manifest, the text summary, exit code)."""
    import sys

    from cepd_deploy.model.format import resolve

    kind = "llvm" if args.target == "tvm" else args.target
    model, shape, label = resolve(args.model, getattr(args, "input_shape", None))
    manifest = build(
        model,
        args.output,
        target=kind,
        verify=getattr(args, "verify", False),
        tune_trials=getattr(args, "tune_trials", 0) or 0,
        input_shape=shape,
        threads=getattr(args, "threads", None),
        label=label,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    return manifest, summary(manifest), 0
