"""Loading a built model: ``load(out_dir)`` -> a callable, numpy in -> numpy out.

>>> model = load("out/")                        # doctest: +SKIP
>>> y = model(np.zeros((1, 3, 224, 224), np.float32))     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cepd_deploy.errors import CEPDError

if TYPE_CHECKING:
    import numpy as np

FORMAT = "cepd-tvm"
VERSION = 1
LIBRARY = "model.so"
MANIFEST = "manifest.json"


def configure_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads (at most the pool's size, fixed when TVM first runs)."""
    import tvm

    if threads:
        from cepd_deploy.threads import clamp

        tvm.get_global_func("runtime.config_threadpool")(1, clamp(threads, "TVM threads"))


class TVMModel:
    """A compiled model: ``model(x)`` runs it on one input batch (float32 NCHW numpy)."""

    def __init__(self, vm, device, manifest: dict) -> None:
        self.vm, self.device, self.manifest = vm, device, manifest
        self.input_shape = tuple(manifest["input_shape"])
        self.output_shape = tuple(manifest["output_shape"])
        self._main = vm["main"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import numpy as np
        import tvm

        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise CEPDError(f"input shape {tuple(x.shape)} does not match the built {self.input_shape}")
        return self._main(tvm.runtime.tensor(x, self.device)).numpy()

    def run_tensor(self, x):
        """Run on a TVM tensor already on the device (for timing without copies)."""
        return self._main(x)

    def __repr__(self) -> str:
        return f"TVMModel({self.manifest.get('label', '')!r}, target={self.manifest['target']['kind']})"


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The build manifest of a TVM build folder, checked (format, version, the fields a loader
    reads); a one-line CEPDError otherwise."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise CEPDError(f"{out_dir}: no {MANIFEST} (not a TVM build folder, or an unfinished one)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise CEPDError(f"{path}: not valid JSON ({why})") from None
    if not isinstance(manifest, dict):
        raise CEPDError(f"{path}: not a build manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("format") != FORMAT:
        raise CEPDError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise CEPDError(f"{path}: version {manifest.get('version')!r} is not supported (expected {VERSION})")
    _check_fields(path, manifest)
    return manifest


def _check_fields(path: Path, m: dict) -> None:
    """CEPDError naming the first field of a manifest that a loader would trip over."""

    def shape(v) -> bool:
        return isinstance(v, list) and 0 < len(v) <= 8 and all(type(d) is int and d > 0 for d in v)

    target, files, lib = m.get("target"), m.get("files", {}), m.get("library", LIBRARY)
    checks = (
        ("target", isinstance(target, dict) and target.get("kind") in ("llvm", "cuda")),
        ("input_shape", shape(m.get("input_shape"))),
        ("output_shape", shape(m.get("output_shape"))),
        ("library", isinstance(lib, str) and lib not in ("", ".", "..") and Path(lib).name == lib),
        ("files", isinstance(files, dict) and all(isinstance(v, str) for v in files.values())),
    )
    for name, ok in checks:
        if not ok:
            raise CEPDError(f"{path}: field {name!r} is missing or malformed ({m.get(name)!r:.60})")


def _check_library(lib_path: Path, manifest: dict) -> None:
    """Before loading: the library is the one the manifest describes (its SHA-256, where recorded)
    and an intact ELF file. A truncated or replaced library is refused here, not by a SIGBUS."""
    from cepd_deploy.ownership import digest

    want = manifest.get("files", {}).get(lib_path.name)
    if want is not None and digest(lib_path) != want:
        raise CEPDError(f"{lib_path}: does not match the digest its manifest records (truncated or replaced "
                        "since the build); build it again")  # fmt: skip
    if sys.platform.startswith("linux") and not _elf_intact(lib_path):
        raise CEPDError(f"{lib_path}: not a complete shared library (truncated?); build it again")


def _elf_intact(path: Path) -> bool:
    """Whether ``path`` is a 64-bit little-endian ELF file that holds its whole section table (it
    sits at the end: a truncated file does not)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return False
    (shoff,) = struct.unpack_from("<Q", head, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
    return 0 < shoff + shentsize * shnum <= size


def load(out_dir: str | os.PathLike, *, threads: int | None = None) -> TVMModel:
    """The model built into ``out_dir`` by :func:`cepd_deploy.targets.tvm.build`."""
    from cepd_deploy.targets.tvm.host import configure_runtime

    configure_runtime()  # before TVM's thread pool starts (the first run)
    import tvm
    from tvm import relax

    manifest = read_manifest(out_dir)
    lib_path = Path(out_dir) / manifest.get("library", LIBRARY)
    if not lib_path.is_file():
        raise CEPDError(f"{out_dir}: library {lib_path.name} is missing")
    _check_library(lib_path, manifest)
    kind = manifest["target"]["kind"]
    device = tvm.cpu() if kind == "llvm" else tvm.cuda(0)
    if not device.exist:
        raise CEPDError(f"{out_dir} was built for {kind}, but no such device is available here")
    if kind == "cuda":  # the library holds CUDA C, compiled at load by this callback (NVRTC/nvcc)
        import tvm.support.nvcc  # noqa: F401
    configure_threads(threads)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), device)
    return TVMModel(vm, device, manifest)
