"""Package layout beyond pyproject.toml: the top-level hw/ folder installs as cepd_deploy.hw, the
native TTSparseConv kernel (kernels/) builds as cepd_deploy._ttsparse, and the same kernel as an
onnxruntime custom-op library builds as cepd_deploy._ort_cepd.

The kernel is a plain shared library loaded with ctypes (no Python C API). Its SIMD tiles are
compiled once per instruction set with the target set inside each source file and picked by
cpuid at load time, so no -march flag is needed and the build runs on any x86-64. Which tile
sources build depends on the machine (:data:`TILE_SOURCES`): AVX-512, AVX2 and generic on x86-64
(the AVX ones carry x86 target attributes), NEON and generic on AArch64, generic elsewhere.

The custom-op library declares the part of onnxruntime's C API it uses itself
(kernels/ort_abi.h: the API is a versioned, append-only table of function pointers, so the
positions of its entries are a stable, documented fact), so it needs no onnxruntime header and
nothing is fetched at build time. It asks for API version 21 and loads in every onnxruntime
release from 1.21 on. ``$CEPD_ORT_HEADERS``, if set to a folder holding onnxruntime's official
onnxruntime_c_api.h, compiles the library against that header instead (a cross-check).

Both libraries are optional: where no C++17 compiler is found or a build fails, the install goes
on without them (fused models then run their function bodies on stock onnxruntime), prints a
WARNING line to stderr (pip shows it with ``-v``) and writes the reason to
cepd_deploy/_build_record.json, which ``cepd-deploy doctor`` reports.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, find_namespace_packages, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

BUILD_ERRORS = (CCompilerError, BaseError)  # compile/link errors and distutils' own (DistutilsError)

ORT_EXT = "cepd_deploy._ort_cepd"
RECORD = "_build_record.json"  # in the cepd_deploy package: what was built, or why not

packages = find_packages(include=["cepd_deploy", "cepd_deploy.*"])
packages += ["cepd_deploy.hw"] + [f"cepd_deploy.hw.{p}" for p in find_namespace_packages("hw")]

#: the kernel's tile builds per machine (ttsparse.cpp dispatches to those its machine has)
TILE_SOURCES = {
    "x86_64": ["kernels/tile_avx512.cpp", "kernels/tile_avx2.cpp", "kernels/tile_generic.cpp"],
    "aarch64": ["kernels/tile_neon.cpp", "kernels/tile_generic.cpp"],
    "other": ["kernels/tile_generic.cpp"],
}
#: platform.machine() spellings of the machines TILE_SOURCES names
MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def kernel_sources(machine: str) -> list[str]:
    """The kernel's sources for ``machine`` (``platform.machine()``)."""
    return ["kernels/ttsparse.cpp", *TILE_SOURCES[MACHINES.get(machine.lower(), "other")]]


KERNEL = kernel_sources(platform.machine())
CXXFLAGS = ["-O3", "-std=c++17", "-Wno-psabi", "-fvisibility=hidden"]
FLAGS = dict(include_dirs=["kernels"], extra_compile_args=CXXFLAGS, extra_link_args=["-pthread"],
             language="c++", optional=True)  # fmt: skip

# every machine's tile sources too, so that an sdist made on one machine builds on the others
OTHER_TILES = sorted({src for srcs in TILE_SOURCES.values() for src in srcs} - set(KERNEL))
TILE = ["kernels/tile.h", "kernels/tile.inc", *OTHER_TILES]

ttsparse = Extension("cepd_deploy._ttsparse", sources=KERNEL, depends=TILE, **FLAGS)
ort_cepd = Extension(ORT_EXT, sources=["kernels/ort_customop.cpp", *KERNEL],
                     depends=[*TILE, "kernels/ort_abi.h"], **FLAGS)  # fmt: skip


def warn(msg: str) -> None:
    print(f"WARNING: cepd-deploy: {msg}", file=sys.stderr, flush=True)


def official_ort_headers() -> str | None:
    """``$CEPD_ORT_HEADERS`` if it names a folder holding onnxruntime_c_api.h (else None, with a
    warning if it is set but holds no such file)."""
    env = os.environ.get("CEPD_ORT_HEADERS")
    if not env:
        return None
    if (Path(env) / "onnxruntime_c_api.h").is_file():
        return env
    warn(f"CEPD_ORT_HEADERS={env} holds no onnxruntime_c_api.h; using kernels/ort_abi.h")
    return None


class BuildExt(build_ext):
    """build_ext for optional native libraries: checks for a C++17 compiler first, reports every
    library it cannot build on stderr and in the build record, and leaves no stale copy of it."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.ort_header = "kernels/ort_abi.h"
        inc = official_ort_headers()
        for e in self.extensions:
            if e.name == ORT_EXT and inc is not None:
                e.include_dirs = [*e.include_dirs, inc]
                e.define_macros = [*e.define_macros, ("CEPD_ORT_OFFICIAL_HEADER", None)]
                self.ort_header = str(Path(inc) / "onnxruntime_c_api.h")

    def run(self) -> None:
        self.record: dict[str, dict] = {}
        self.in_source = self.inplace  # super().run() clears it while building
        super().run()
        self.write_record()

    def build_extensions(self) -> None:
        why = self.cxx17_missing()
        if why is not None:
            self.failed(self.extensions, why)
            self.extensions = []
            return
        super().build_extensions()

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            src = re.search(r"'-c', '([^']+)'", str(exc))  # the compiler's command line
            what = f"compiling {src.group(1)} failed" if src else f"the build failed ({type(exc).__name__})"
            self.failed([ext], f"{what}; `pip install -v` shows the compiler's messages")
            return
        self.record[ext.name] = {"built": True, "error": None}

    def cxx17_missing(self) -> str | None:
        """Why no C++17 compiler is usable (None if one is)."""
        cxx = (getattr(self.compiler, "compiler_cxx", None) or ["the C++ compiler"])[0]
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp, "cxx17.cpp")
            src.write_text("#include <optional>\nint main() { return std::optional<int>(0).value(); }\n")
            try:
                self.compiler.compile([str(src)], output_dir=tmp, extra_postargs=["-std=c++17"])
            except BUILD_ERRORS as exc:
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                return f"no working C++17 compiler ({cxx}: {lines[-1] if lines else 'failed'})"
        return None

    def failed(self, exts: list[Extension], why: str) -> None:
        """Record and announce (one line) that ``exts`` were not built; remove their outputs from
        earlier builds, so no stale library passes for this build's."""
        names = " and ".join(e.name for e in exts)
        them = "them" if len(exts) > 1 else "it"
        warn(f"{names} not built: {why}; the install goes on without {them} (see `cepd-deploy doctor`)")
        for ext in exts:
            self.record[ext.name] = {"built": False, "error": why}
            stale = [Path(self.build_lib) / self.get_ext_filename(self.get_ext_fullname(ext.name))]
            if self.in_source:
                build_py = self.get_finalized_command("build_py")
                stale.append(Path(self._get_inplace_equivalent(build_py, ext)[0]))
            for path in stale:
                path.unlink(missing_ok=True)

    def write_record(self) -> None:
        """Write what was built (or why not) into the package, for ``cepd-deploy doctor``."""
        cxx = getattr(self.compiler, "compiler_cxx", None) or [None]
        data = {"extensions": self.record, "ort_header": self.ort_header, "compiler": cxx[0]}
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        dirs = [Path(self.build_lib) / "cepd_deploy"]
        if self.in_source:
            dirs.append(Path(self.get_finalized_command("build_py").get_package_dir("cepd_deploy")))
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f"{RECORD}.tmp"
            tmp.write_text(text)
            tmp.replace(d / RECORD)


setup(
    packages=packages,
    package_dir={"cepd_deploy.hw": "hw"},
    ext_modules=[ttsparse, ort_cepd],
    cmdclass={"build_ext": BuildExt},
)
