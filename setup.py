"""Package layout beyond pyproject.toml: the top-level hw/ folder installs as cepd_deploy.hw, the
native TTSparseConv kernel (kernels/) builds as cepd_deploy._ttsparse, and the same kernel as an
onnxruntime custom-op library builds as cepd_deploy._ort_cepd.

The kernel is a plain shared library loaded with ctypes (no Python C API). Its SIMD tiles are
compiled once per instruction set with the target set inside each source file and picked by
cpuid at load time, so no -march flag is needed and the build runs on any x86-64. It is
optional: where no C++17 compiler is found the install goes on without it and the ONNX target
uses stock onnxruntime only.

The custom-op library needs onnxruntime's C API header, which the onnxruntime wheel does not
ship. It is taken from ``$CEPD_ORT_HEADERS`` (a folder holding onnxruntime_c_api.h) or else from
Debian's libonnxruntime-dev 1.21 package (downloaded once, SHA256-checked, cached under
build/ort-headers/). The C API is append-only, so the library built against API version 21 loads
in newer onnxruntime releases. Where the header cannot be had, the library is skipped with a
warning; the install never fails because of it.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import sys
import tarfile
import urllib.request
from functools import lru_cache
from pathlib import Path

from setuptools import Extension, find_namespace_packages, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
ORT_DEB = ("http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
           "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08")  # fmt: skip
ORT_CACHE = HERE / "build" / "ort-headers"
ORT_EXT = "cepd_deploy._ort_cepd"

packages = find_packages(include=["cepd_deploy", "cepd_deploy.*"])
packages += ["cepd_deploy.hw"] + [f"cepd_deploy.hw.{p}" for p in find_namespace_packages("hw")]

KERNEL = ["kernels/ttsparse.cpp", "kernels/tile_avx512.cpp", "kernels/tile_avx2.cpp",
          "kernels/tile_generic.cpp"]  # fmt: skip
FLAGS = dict(include_dirs=["kernels"], depends=["kernels/tile.h", "kernels/tile.inc"],
             extra_compile_args=["-O3", "-std=c++17", "-Wno-psabi", "-fvisibility=hidden"],
             extra_link_args=["-pthread"], language="c++", optional=True)  # fmt: skip

ttsparse = Extension("cepd_deploy._ttsparse", sources=KERNEL, **FLAGS)
ort_cepd = Extension(ORT_EXT, sources=["kernels/ort_customop.cpp", *KERNEL], **FLAGS)


def _ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def _fetch_ort_headers(dest: Path) -> None:
    """Download Debian's libonnxruntime-dev, check its SHA256, put its top-level headers in ``dest``."""
    url, sha256 = ORT_DEB
    with urllib.request.urlopen(url, timeout=30) as resp:
        deb = resp.read()
    if hashlib.sha256(deb).hexdigest() != sha256:
        raise ValueError(f"SHA256 mismatch for {url}")
    members = _ar_members(deb)
    name = next(n for n in members if n.startswith("data.tar"))
    raw = members[name]
    raw = lzma.decompress(raw) if name.endswith(".xz") else raw
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar.getmembers():
            path = m.name.removeprefix("./")
            if m.isfile() and path.startswith("usr/include/onnxruntime/") and path.count("/") == 3:
                (tmp / Path(path).name).write_bytes(tar.extractfile(m).read())
    if not (tmp / "onnxruntime_c_api.h").exists():
        raise ValueError("onnxruntime_c_api.h not found in the package")
    tmp.rename(dest)


@lru_cache(maxsize=1)
def ort_headers() -> str | None:
    """A folder holding onnxruntime_c_api.h, or None (after one warning line) if there is none."""
    env = os.environ.get("CEPD_ORT_HEADERS")
    if env:
        if (Path(env) / "onnxruntime_c_api.h").exists():
            return env
        why = f"CEPD_ORT_HEADERS={env} holds no onnxruntime_c_api.h"
    else:
        if (ORT_CACHE / "onnxruntime_c_api.h").exists():
            return str(ORT_CACHE)
        try:
            _fetch_ort_headers(ORT_CACHE)
            return str(ORT_CACHE)
        except Exception as exc:  # network, checksum, archive: any of them only skips the library
            why = f"cannot get onnxruntime headers from {ORT_DEB[0]} ({type(exc).__name__}: {exc})"
    print(f"WARNING: {why}; building without the onnxruntime custom-op library ({ORT_EXT})", file=sys.stderr)
    return None


class BuildExt(build_ext):
    """build_ext that finds the onnxruntime headers for the custom-op library, or drops it."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if any(e.name == ORT_EXT for e in self.extensions):
            inc = ort_headers()
            if inc is None:
                self.extensions = [e for e in self.extensions if e.name != ORT_EXT]
            else:
                for e in self.extensions:
                    if e.name == ORT_EXT and inc not in e.include_dirs:
                        e.include_dirs = [*e.include_dirs, inc]


setup(
    packages=packages,
    package_dir={"cepd_deploy.hw": "hw"},
    ext_modules=[ttsparse, ort_cepd],
    cmdclass={"build_ext": BuildExt},
)
