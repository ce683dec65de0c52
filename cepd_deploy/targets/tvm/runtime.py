"""Loading a built model: ``load(out_dir)`` -> a callable, numpy in -> numpy out.

>>> model = load("out/")                        # doctest: +SKIP
>>> y = model(np.zeros((1, 3, 224, 224), np.float32))     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cepd_deploy.errors import CEPDError

FORMAT = "cepd-tvm"
VERSION = 1
LIBRARY = "model.so"
MANIFEST = "manifest.json"


def configure_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads (at most the pool's size, fixed when TVM first runs)."""
    import tvm

    if threads:
        tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


class TVMModel:
    """A compiled model: ``model(x)`` runs it on one input batch (float32 NCHW numpy)."""

    def __init__(self, vm, device, manifest: dict) -> None:
        self.vm, self.device, self.manifest = vm, device, manifest
        self.input_shape = tuple(manifest["input_shape"])
        self.output_shape = tuple(manifest["output_shape"])
        self._main = vm["main"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
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
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise CEPDError(f"{out_dir}: no {MANIFEST} (not a TVM build folder, or an unfinished one)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CEPDError(f"{path}: not valid JSON ({exc.msg})") from None
    if manifest.get("format") != FORMAT:
        raise CEPDError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise CEPDError(f"{path}: version {manifest.get('version')!r} is not supported (expected {VERSION})")
    return manifest


def load(out_dir: str | os.PathLike, *, threads: int | None = None) -> TVMModel:
    """The model built into ``out_dir`` by :func:`cepd_deploy.targets.tvm.build`."""
    import tvm
    from tvm import relax

    manifest = read_manifest(out_dir)
    lib_path = Path(out_dir) / manifest.get("library", LIBRARY)
    if not lib_path.is_file():
        raise CEPDError(f"{out_dir}: library {lib_path.name} is missing")
    kind = manifest["target"]["kind"]
    device = tvm.cpu() if kind == "llvm" else tvm.cuda(0)
    if not device.exist:
        raise CEPDError(f"{out_dir} was built for {kind}, but no such device is available here")
    if kind == "cuda":  # the library holds CUDA C, compiled at load by this callback (NVRTC/nvcc)
        import tvm.support.nvcc  # noqa: F401
    configure_threads(threads)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), device)
    return TVMModel(vm, device, manifest)
