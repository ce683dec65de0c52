"""Build a PYNQ-Z1 project from a Plan: calibrate, compile, render, optionally C-simulate.

>>> result = build(plan, "build/", label="resnet20", csim=True)     # doctest: +SKIP
>>> result["csim"]["bit_exact"]                        # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cepd_deploy import ownership
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Plan
from cepd_deploy.targets.pynq_z1 import fxp
from cepd_deploy.targets.pynq_z1.checks import check_generated
from cepd_deploy.targets.pynq_z1.config import EngineConfig, load_board, make_config
from cepd_deploy.targets.pynq_z1.fixed import dequantize, quantize
from cepd_deploy.targets.pynq_z1.model import check_fit, resources, summarise
from cepd_deploy.targets.pynq_z1.program import MAGIC, compile_program
from cepd_deploy.targets.pynq_z1.render import project_context, render_project, render_readme

#: The file list of a folder this builder made (JSON: every generated file and its SHA-256); a
#: rebuild replaces only those files (see cepd_deploy.ownership) and keeps everything else.
MARKER = ".cepd-pynq-z1"
GENERATOR = "cepd-deploy build --target pynq-z1"


def tolerance(bits: int) -> float:
    """The stated bound on max |fixed - float| relative to max |float output|."""
    return min(0.5, 2.0 ** (10 - bits))


def _float_outputs(plan, images: np.ndarray) -> np.ndarray:
    from cepd_deploy.plan.reference import run

    return np.concatenate([run(plan, torch.from_numpy(x[None])).numpy() for x in images])


def _tmp_prefix(out: Path) -> str:
    """The name of a build's temporary folder beside ``out``, less mkdtemp's 8 random characters."""
    return f".{out.name}.cepd-tmp-"


def _tmp_pattern(out: Path) -> str:
    """Names of this builder's temporary folders beside ``out`` (and the previous builder's)."""
    return rf"{re.escape(_tmp_prefix(out))}[a-z0-9_]{{8}}|\.{re.escape(out.name)}\.old-\d{{10,}}"


def _owned(out: Path) -> dict[str, str | None]:
    """The files an earlier build generated in ``out`` (path -> SHA-256; None: written by a build
    that was interrupted), or a CEPDError when ``out`` was not made by this builder or the user
    changed some of them."""
    marker = out / MARKER
    if not marker.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return {}
        raise CEPDError(f"output folder {out} exists and was not made by cepd-deploy build --target pynq-z1; "
                        "choose another (or an empty) folder")  # fmt: skip
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        files = data["files"]
        ok = isinstance(files, dict) and all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in files.items()
        )
    except (ValueError, KeyError, TypeError, OSError):
        ok = False
    safe = ok and all(not Path(k).is_absolute() and ".." not in Path(k).parts and k != MARKER for k in files)
    if not safe:
        raise CEPDError(f"{out} was made by an older cepd-deploy (or its {MARKER} is damaged): its files "
                        "cannot be told from yours; move them away or choose another folder")  # fmt: skip
    edited = ownership.changed(out, files)
    if edited:
        were = "was" if len(edited) == 1 else "were"
        raise CEPDError(f"{out}: {ownership.names(edited)} {were} changed since cepd-deploy generated it; "
                        "move your version away (or choose another folder) to rebuild")  # fmt: skip
    return files


def _prepare_out(out: Path) -> dict[str, str | None]:
    """Check ``out`` before the work; returns the files a rebuild may replace."""
    if out.exists() and not out.is_dir():
        raise CEPDError(f"output path exists and is not a folder: {out}")
    if not out.parent.is_dir():
        raise CEPDError(f"output folder's parent does not exist: {out.parent}")
    ownership.sweep_stale(out.parent, _tmp_pattern(out))  # left by killed builds
    return _owned(out) if out.is_dir() else {}


def _write_marker(folder: Path, files: dict[str, str | None], complete: bool) -> None:
    data = {"generator": GENERATOR, "complete": complete, "files": dict(sorted(files.items()))}
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def _install(tmp: Path, out: Path) -> None:
    """Move the finished project from ``tmp`` into ``out``: a new folder by one rename; into an
    earlier build's folder, file by file, replacing the files it generated and keeping the rest.
    While files move, the marker lists old and new files, so an interrupted install is still
    recognised (and completed) by the next build."""
    new = {rel: ownership.digest(tmp / rel) for rel in ownership.listing(tmp, skip=[MARKER])}
    if not out.exists():
        _write_marker(tmp, new, complete=True)
        tmp.rename(out)
        return
    old = _owned(out)  # again, right before touching anything
    foreign = [rel for rel in new if rel not in old and (out / rel).exists() or _blocked(out, rel, old)]
    if foreign:
        raise CEPDError(f"{out}: {ownership.names(foreign)} would be overwritten but were not generated by "
                        "cepd-deploy; move them away or choose another folder")  # fmt: skip
    _write_marker(out, {**old, **dict.fromkeys(new)}, complete=False)
    for rel in old.keys() - new.keys():
        (out / rel).unlink(missing_ok=True)
    for rel in new:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)
    for d in sorted({(out / rel).parent for rel in old}, key=lambda p: -len(p.parts)):
        if d != out and d.is_dir() and not any(d.iterdir()):
            d.rmdir()  # a folder only generated files were in
    _write_marker(out, new, complete=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _blocked(out: Path, rel: str, old: dict) -> bool:
    """Whether a parent of ``rel`` in ``out`` is a file the build did not generate."""
    parts = Path(rel).parts
    for k in range(1, len(parts)):
        p = out.joinpath(*parts[:k])
        if p.exists() and not p.is_dir():
            return Path(*parts[:k]).as_posix() not in old
    return False


def build(
    plan: Plan,
    out: str | Path,
    *,
    label: str,
    config: EngineConfig | dict | None = None,
    bits: int | None = None,
    clock_mhz: float | None = None,
    csim: bool = False,
    calib: int = 8,
    golden: int = 4,
    seed: int = 0,
) -> dict:
    """Generate the project of ``plan`` (lowered with batch 1) in ``out`` and return the figures
    ``--json`` prints; ``label`` names the model in the generated files. The calibration samples
    and golden images are standard-normal images from ``seed``."""
    if not isinstance(plan, Plan):  # a model or a path: cepd_deploy.frontend.load.load_plan lowers it
        raise TypeError(f"build takes a Plan, not a {type(plan).__name__}")
    if not isinstance(label, str):
        raise CEPDError(f"label must be text, got {label!r}")
    out = Path(out)
    _prepare_out(out)  # a rebuild's folder is checked again when the files move in
    shape = tuple(plan.input_shape)
    cfg = make_config(config, bits=bits, clock_mhz=clock_mhz)
    board = load_board()
    res = resources(cfg)
    check_fit(res, board)
    if calib < 1 or golden < 1:
        raise CEPDError("need at least one calibration sample and one golden image")
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

    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out), dir=out.parent))
    except OSError as exc:
        raise ownership.io_error(exc, f"the project beside {out}") from None
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
        check_generated(tmp)  # every generated Python and Tcl file parses
        _install(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ownership.io_error(exc, f"the project {out}") from None
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
