"""``cepd-deploy doctor``: what was built and what was found here, to tell why a target is missing.

It reports the native kernel library (its tile builds, the one cpuid picks), the onnxruntime
custom-op library (built? registers into onnxruntime? which release it sees), the Python packages
the targets use (onnxruntime, torch, onnx, apache-tvm, hls4ml and its ap_types headers), the C++
compiler for C-simulation, Python and the CPU. It only loads what it checks: package versions come
from their metadata, so torch and TVM are not imported unless ``--import`` asks. Missing optional
parts are reported, not errors: the exit status is 0.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from cepd_deploy.cli.common import add_json_arg, print_json
from cepd_deploy.cpu import cpuinfo, usable_cores

PACKAGE = Path(__file__).resolve().parents[1]  # the cepd_deploy folder
RECORD = PACKAGE / "_build_record.json"  # written by setup.py's build_ext
ISAS = ("scalar", "avx2", "avx512f")  # the kernel's tile builds by level (cepd_deploy.native.ISAS)
ORT_API = 21  # the C API version the custom-op library asks for (kernels/ort_abi.h)
#: CPU features worth knowing here: the kernel's tiles use avx512f+avx512vl, avx2+fma
CPU_FEATURES = ("avx512f", "avx512vl", "avx512bw", "avx512_vnni", "avx2", "fma", "avx", "sse4_2",
                "neon", "asimd", "sve")  # fmt: skip


def register(sub) -> None:
    """Add ``doctor`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "doctor",
        help="what was built and found: native libraries, packages, compiler, CPU",
        description="Report the native kernel library (tile builds, the one picked on this CPU), the "
        "onnxruntime custom-op library (built, registers, the onnxruntime it sees), onnxruntime, torch, "
        "onnx, apache-tvm, hls4ml's ap_types headers, the C++ compiler for C-simulation, Python and "
        "the CPU. Exits 0 even where optional parts are missing.",
    )
    add_json_arg(p)
    p.add_argument("--import", dest="do_import", action="store_true",
                   help="also import torch and tvm to prove they load (slow)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``doctor``: print the report (or its JSON); always 0."""
    report = collect(do_import=args.do_import)
    if args.json:
        print_json(report)
    else:
        print("\n".join(text_lines(report)))
    return 0


# ---- collecting ------------------------------------------------------------------------------


def collect(do_import: bool = False) -> dict:
    """Everything ``doctor`` reports, as one JSON-ready dict."""
    from cepd_deploy import __version__

    record = build_record()
    return {
        "cepd_deploy": {"version": __version__, "package": str(PACKAGE)},
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "cpu": cpu_info(),
        "build_record": record,
        "kernel": kernel_info(record),
        "ort_library": ort_library_info(record),
        "onnxruntime": onnxruntime_info(),
        "torch": package_info("torch", "torch", do_import),
        "onnx": package_info("onnx", "onnx", False),
        "tvm": {**package_info("apache-tvm", "tvm", do_import), "ffi_version": _version("apache-tvm-ffi")},
        "hls4ml": hls4ml_info(),
        "cxx": cxx_info(),
    }


def build_record() -> dict | None:
    """setup.py's record of the last native build (what was built, or why not), or None."""
    try:
        return json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None


def _not_built(record: dict | None, name: str) -> str:
    """Why extension ``name`` is missing, as far as the build record tells."""
    entry = ((record or {}).get("extensions") or {}).get(name)
    if entry and not entry.get("built") and entry.get("error"):
        return f"not built: {entry['error']}"
    return "not built (no build record says why; reinstall with `pip install -v -e .` to see the build)"


def extension_path(stem: str) -> Path | None:
    """The package's compiled library ``stem``, or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = PACKAGE / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def cpu_info() -> dict:
    """Model, architecture, the relevant SIMD features and the core counts."""
    model, features = cpuinfo()
    machine = platform.machine()
    return {
        "model": model,
        "machine": machine,
        "features": {f: f in features for f in CPU_FEATURES if f in features or not _other_arch(f, machine)},
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
    }


def _other_arch(feature: str, machine: str) -> bool:
    """Whether ``feature`` belongs to another architecture than ``machine`` (so not worth a 'no')."""
    arm_feature = feature in ("neon", "asimd", "sve")
    arm_machine = machine.lower() in ("aarch64", "arm64", "armv7l")
    return arm_feature != arm_machine


def kernel_info(record: dict | None) -> dict:
    """The native kernel library: where, whether it loads, its tile builds, the picked one, threads."""
    path = extension_path("_ttsparse")
    out = {"built": path is not None, "path": str(path) if path else None, "loads": False, "error": None,
           "isa_builds": None, "cpu_isa": None, "isa": None, "threads": None}  # fmt: skip
    if path is None:
        out["error"] = _not_built(record, "cepd_deploy._ttsparse")
        return out
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        out["error"] = f"does not load: {exc}"
        return out
    out["loads"] = True
    out["isa"] = ISAS[lib.cepd_tts_isa()]
    out["threads"] = int(lib.cepd_tts_threads())
    if hasattr(lib, "cepd_tts_isa_builds"):  # libraries built before it existed lack these two
        bits = int(lib.cepd_tts_isa_builds())
        out["isa_builds"] = [name for level, name in enumerate(ISAS) if bits >> level & 1]
        out["cpu_isa"] = ISAS[lib.cepd_tts_cpu_isa()]
    else:
        out["error"] = "built from older sources (no build query): rebuild with `pip install -e .`"
    return out


def ort_library_info(record: dict | None) -> dict:
    """The custom-op library: where, whether onnxruntime registers it, the release it sees."""
    path = extension_path("_ort_cepd")
    out = {"built": path is not None, "path": str(path) if path else None, "registers": False,
           "onnxruntime_seen": None, "api_version": None, "header": (record or {}).get("ort_header"),
           "error": None}  # fmt: skip
    if path is None:
        out["error"] = _not_built(record, "cepd_deploy._ort_cepd")
        return out
    try:
        import onnxruntime as ort
    except ImportError:
        out["error"] = "onnxruntime is not installed"
        return out
    try:
        ort.SessionOptions().register_custom_ops_library(str(path))
    except Exception as exc:  # onnxruntime raises its own exception types
        out["error"] = f"onnxruntime {ort.__version__} does not register it: {str(exc).strip()[:300]}"
        return out
    lib = ctypes.CDLL(str(path))  # the instance onnxruntime loaded: same file, same handle
    if not hasattr(lib, "cepd_ort_version"):
        out["registers"] = True
        out["error"] = "built from older sources (no version query): rebuild with `pip install -e .`"
        return out
    lib.cepd_ort_version.restype = ctypes.c_char_p
    seen = lib.cepd_ort_version()
    out["api_version"] = int(lib.cepd_ort_api_version())
    out["onnxruntime_seen"] = seen.decode() if seen else None
    out["registers"] = int(lib.cepd_ort_registered()) > 0
    if not out["registers"]:
        out["error"] = (f"onnxruntime {out['onnxruntime_seen']} lacks C API version {out['api_version']} "
                        "(onnxruntime >= 1.21 needed)")  # fmt: skip
    return out


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_info(dist: str, module: str, do_import: bool) -> dict:
    """Installed version (metadata) and whether the module is found, or imports with ``do_import``."""
    out = {"version": _version(dist), "found": importlib.util.find_spec(module) is not None, "imports": None,
           "error": None}  # fmt: skip
    if do_import and out["found"]:
        try:
            importlib.import_module(module)
            out["imports"] = True
        except Exception as exc:  # a broken install can raise anything
            out["imports"] = False
            out["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    return out


def onnxruntime_info() -> dict:
    """onnxruntime's version, whether it imports and its execution providers (or the import error)."""
    out = {"version": _version("onnxruntime"), "found": False, "providers": None, "error": None}
    try:
        import onnxruntime as ort
    except ImportError as exc:
        out["error"] = str(exc)
        return out
    out.update(found=True, version=ort.__version__, providers=list(ort.get_available_providers()))
    return out


def hls4ml_info() -> dict:
    """hls4ml's version and its ap_types headers, where the pynq_z1 C-simulation looks for them
    (``targets.pynq_z1.csim.ap_types_dir``, not imported: it loads torch)."""
    out = {"version": _version("hls4ml"), "ap_types": None}
    spec = importlib.util.find_spec("hls4ml")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "templates" / "vivado" / "ap_types"
        if (path / "ap_int.h").is_file():
            out["ap_types"] = str(path)
    return out


def cxx_info() -> dict:
    """The C++ compiler C-simulation uses (``$CXX``, default g++): where and which version."""
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    out = {"command": cxx, "path": path, "version": None}
    if path:
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
            out["version"] = (done.stdout.strip().splitlines() or [None])[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return out


# ---- printing --------------------------------------------------------------------------------


def _pkg(info: dict, hint: str) -> str:
    if not info["version"] and not info["found"]:
        return f"not installed ({hint})"
    text = info["version"] or "installed (version unknown)"
    if not info["found"]:
        return f"{text}, but its module is not found"
    if info.get("imports") is False:
        return f"{text}, but it does not import: {info['error']}"
    return text + ("; imports" if info.get("imports") else "")


def text_lines(r: dict) -> list[str]:
    """The report as aligned lines, one per part."""
    cpu, k, lib = r["cpu"], r["kernel"], r["ort_library"]
    has = [f for f, v in cpu["features"].items() if v]
    lacks = [f for f, v in cpu["features"].items() if not v]
    cpu_line = f"{cpu['model']} ({cpu['machine']}), {cpu['cores']} cores ({cpu['usable_cores']} usable)"
    cpu_line += f"; {' '.join(has) or 'no SIMD features found'}"
    cpu_line += f"; no {' '.join(lacks)}" if lacks else ""
    if k["loads"]:
        kernel = f"{k['path']}\n{'':16}tile builds {', '.join(k['isa_builds'] or ['?'])}; "
        kernel += f"cpuid picks {k['cpu_isa'] or k['isa']}; {k['threads']} threads"
        kernel += f"\n{'':16}{k['error']}" if k["error"] else ""
    else:
        kernel = k["error"]
    if lib["registers"]:
        ort_lib = f"{lib['path']}\n{'':16}registers into onnxruntime {lib['onnxruntime_seen']}"
        ort_lib += f" (C API {lib['api_version']}; header {lib['header'] or 'unknown'})"
        ort_lib += f"\n{'':16}{lib['error']}" if lib["error"] else ""
    else:
        ort_lib = lib["error"]
    ort = r["onnxruntime"]
    ort_line = f"{ort['version']} ({', '.join(ort['providers'])})" if ort["found"] else "not installed"
    tvm_info = dict(r["tvm"])
    if tvm_info["version"] and tvm_info["ffi_version"]:
        tvm_info["version"] += f" (apache-tvm-ffi {tvm_info['ffi_version']})"
    tvm = _pkg(tvm_info, "pip install cepd-deploy[tvm]")
    hls = r["hls4ml"]
    if hls["version"] is None:
        hls_line = "not installed (pip install cepd-deploy[fpga]): no ap_types headers for C-simulation"
    else:
        hls_line = f"{hls['version']}; ap_types headers " + (hls["ap_types"] or "missing")
    cxx = r["cxx"]
    cxx_line = f"{cxx['path']} ({cxx['version']})" if cxx["path"] else f"{cxx['command']} not found (set CXX)"
    py = r["python"]
    rows = [
        ("cepd-deploy", f"{r['cepd_deploy']['version']} ({r['cepd_deploy']['package']})"),
        ("python", f"{py['version']} ({py['executable']})"),
        ("cpu", cpu_line),
        ("native kernel", kernel),
        ("custom-op lib", ort_lib),
        ("onnxruntime", ort_line),
        ("torch", _pkg(r["torch"], "pip install torch")),
        ("onnx", _pkg(r["onnx"], "pip install onnx")),
        ("tvm", tvm),
        ("hls4ml", hls_line),
        ("c++ (csim)", cxx_line),
    ]
    return [f"{name:<15} {value}" for name, value in rows]
