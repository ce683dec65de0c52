"""Compile a Plan with TVM (Relax VM + our kernels) and write a deployable folder.

``out/model.so`` (``export_library``: the kernels, the VM bytecode and the weights) and
``out/manifest.json`` (what was built, for which target, how it verified). The Plan is compiled
as given: :class:`~cepd_deploy.targets.tvm.target.TVM`'s verbs apply the target's passes first.
Light at import (TVM and numpy are imported by the functions).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cepd_deploy import ownership
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Plan
from cepd_deploy.targets.tvm import host
from cepd_deploy.targets.tvm.runtime import FORMAT, LIBRARY, MANIFEST, VERSION

if TYPE_CHECKING:
    import numpy as np

Log = Callable[[str], None]
TMP_PREFIX = ".tvm-build-"  # a build's temporary folder inside the output folder
TMP_PATTERN = r"\.tvm-build-[a-z0-9_]{8}"


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

    host.configure_runtime()  # before tuning runs the first kernel
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


def build(
    plan: Plan,
    out_dir: str | os.PathLike,
    *,
    target: str = "llvm",
    verify: bool = False,
    tune_trials: int = 0,
    threads: int | None = None,
    label: str | None = None,
    log: Log | None = None,
) -> dict:
    """Compile ``plan`` (as given: no passes) into ``out_dir``; returns the manifest. ``verify``
    runs the built library on a random input against the Plan's reference interpreter.

    >>> plan = load_plan("resnet20").plan                              # doctest: +SKIP
    >>> build(plan, "out/", verify=True)["verify"]                     # doctest: +SKIP
    {'max_rel_err': {'plan': 3.1e-07}, 'tol': 0.0001}
    """
    if not isinstance(plan, Plan):
        raise CEPDError(f"the TVM build takes a Plan, not a {type(plan).__name__} "
                        "(cepd_deploy.frontend.load.load_plan lowers a model)")  # fmt: skip
    if target not in host.KINDS:
        raise CEPDError(f"unknown TVM target {target!r}; valid: {', '.join(host.KINDS)}")
    if tune_trials < 0:
        raise CEPDError(f"--tune-trials must be >= 0, got {tune_trials}")
    if tune_trials and target != "llvm":
        raise CEPDError("tuning is implemented for the llvm (CPU) target only")
    if threads is not None:
        from cepd_deploy.threads import clamp

        threads = clamp(threads, "--threads")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CEPDError(f"output path exists and is not a folder: {out}")
    if not out.parent.exists():
        raise CEPDError(f"output folder's parent does not exist: {out.parent}")
    check_owned(out)  # before the work; again right before the files move
    compiled = compile_plan(plan, target, threads=threads, tune_trials=tune_trials, log=log)
    from cepd_deploy.plan.cost import totals

    tot = totals(plan)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "label": label or "plan",
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
    try:
        out.mkdir(exist_ok=True)
        ownership.sweep_stale(out, TMP_PATTERN)  # left by killed builds
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    except OSError as exc:
        raise ownership.io_error(exc, f"the build into {out}") from None
    try:
        _export(compiled.executable, tmp / LIBRARY, target)
        manifest["files"] = {LIBRARY: ownership.digest(tmp / LIBRARY)}  # checked before every load
        if verify:
            manifest["verify"] = verify_build(tmp, plan, manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        check_owned(out)
        stale = out / MANIFEST  # an old manifest must not describe the new library
        if stale.exists():
            stale.unlink()
        os.replace(tmp / LIBRARY, out / LIBRARY)
        os.replace(tmp / MANIFEST, out / MANIFEST)  # last: its presence marks a complete build
    except OSError as exc:
        raise ownership.io_error(exc, f"the build into {out}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def check_owned(out: Path) -> None:
    """CEPDError unless every file a build writes into ``out`` (``model.so``, ``manifest.json``)
    is absent or was written by an earlier build: a manifest of this format and the library it
    describes (by digest; a manifest from before digests were recorded is trusted). Other files
    in ``out`` are never touched."""
    man, lib = out / MANIFEST, out / LIBRARY
    ours: dict | None = None
    if man.exists():
        try:
            data = json.loads(man.read_text(encoding="utf-8"))
            ours = data if isinstance(data, dict) and data.get("format") == FORMAT else None
        except (ValueError, OSError):
            ours = None
    foreign = [] if ours is not None or not man.exists() else [MANIFEST]
    if lib.exists() or lib.is_symlink():
        files = ours.get("files") if ours is not None else None
        want = files.get(LIBRARY) if isinstance(files, dict) else None
        legacy = ours is not None and "files" not in ours
        intact = lib.is_file() and not lib.is_symlink() and (legacy or want == ownership.digest(lib))
        if ours is None or not intact:
            foreign.append(LIBRARY)
    if foreign:
        raise CEPDError(f"{out}: {ownership.names(foreign)} would be overwritten but "
                        f"{'was' if len(foreign) == 1 else 'were'} not written by cepd-deploy build "
                        f"(or changed since); move {'it' if len(foreign) == 1 else 'them'} away or choose "
                        "another folder")  # fmt: skip


def verify_build(folder: Path, plan: Plan, manifest: dict, *, seed: int = 0) -> dict:
    """Run the built library on a random input against the Plan's reference interpreter; raises
    CEPDError beyond 1e-4 x max|y|. (Comparing with the source model is the caller's: the target
    sees only the Plan.)"""
    import numpy as np
    import tvm

    from cepd_deploy.targets.tvm.runtime import load

    kind = manifest["target"]["kind"]
    if kind == "cuda" and not tvm.cuda(0).exist:
        return {"skipped": "no CUDA device on this machine"}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    model = load(folder)
    x = np.random.default_rng(seed).standard_normal(plan.input_shape).astype(np.float32)
    return check_outputs(model(x), plan, x)


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


def check_outputs(y: np.ndarray, plan: Plan, x: np.ndarray, *, tol: float = 1e-4) -> dict:
    """Relative max errors of ``y`` vs the Plan reference (``{"max_rel_err": {"plan": e}, "tol":
    tol}``); CEPDError beyond ``tol``."""
    import numpy as np

    from cepd_deploy.plan.reference import run

    refs = {"plan": run(plan, x).numpy()}
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
