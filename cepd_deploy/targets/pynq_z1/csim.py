"""C-simulation: compile the engine with g++ against hls4ml's ap_types headers and run it.

The engine does not depend on the model (the program is data), so one build per engine
configuration is compiled once and cached (``$CEPD_DEPLOY_CACHE`` or ``~/.cache/cepd-deploy``),
with the SHA-256 of each binary: an entry whose binaries do not match (truncated, replaced) is
discarded with a notice and compiled again. Only the small testbench is compiled per model (it
prints the model's label).

>>> sim = build_sim(EngineConfig())                     # doctest: +SKIP
>>> out = run_csim(sim, blob, images_q, label="m")       # int16 outputs   # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cepd_deploy.cache import cache_root, discard, ensure_dir
from cepd_deploy.errors import CEPDError
from cepd_deploy.ownership import digest as file_digest
from cepd_deploy.ownership import sweep_stale
from cepd_deploy.targets.pynq_z1.config import EngineConfig
from cepd_deploy.targets.pynq_z1.render import render_engine

#: -Wall for our code; the named exceptions are noise from the ap_types headers' templates
CXXFLAGS = [
    "-O2",
    "-std=c++14",
    "-fPIC",
    "-Wall",
    "-Wno-unknown-pragmas",
    "-Wno-unused-label",
    "-Wno-uninitialized",
    "-Wno-maybe-uninitialized",
    "-Wno-int-in-bool-context",
]


def ap_types_dir() -> Path:
    """The ap_int/ap_fixed headers shipped in the installed hls4ml wheel."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        raise CEPDError(
            "C-simulation needs the ap_types headers from hls4ml: pip install hls4ml (or cepd-deploy[fpga])"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "templates" / "vivado" / "ap_types"
    if not (path / "ap_int.h").is_file():
        raise CEPDError(f"hls4ml is installed but its ap_types headers are missing ({path})")
    return path


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise CEPDError(f"C-simulation needs a C++ compiler: {cxx!r} not found (set CXX)")
    return cxx


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-15:]
        raise CEPDError(f"C-simulation build failed: {' '.join(cmd[:2])} ...\n" + "\n".join(tail))


BINARIES = ("engine.o", "libcepd_sim.so")  # what a cached engine build holds, checked by digest
DIGESTS = "digests.json"


@dataclass(frozen=True)
class SimBuild:
    """One compiled engine: its sources, object file and ctypes library."""

    root: Path
    engine_obj: Path
    lib: Path

    @property
    def src(self) -> Path:
        return self.root / "src"


def build_sim(cfg: EngineConfig, cache: Path | None = None) -> SimBuild:
    """Compile (or reuse) the engine for ``cfg``: object file + simulation shared library."""
    ap = ap_types_dir()
    cxx = _compiler()
    with tempfile.TemporaryDirectory() as tmp:
        render_engine(cfg, Path(tmp))
        digest = hashlib.sha256()
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file() and f.name != "model_info.h":
                digest.update(f.name.encode() + f.read_bytes())
        digest.update(" ".join([cxx, *CXXFLAGS, str(ap)]).encode())
        root = (cache or cache_root()) / "pynq_z1" / digest.hexdigest()[:16]
        lib = root / "libcepd_sim.so"
        if root.exists() or root.is_symlink():
            why = _entry_damaged(root)
            if why is None:
                return SimBuild(root, root / "engine.o", lib)
            discard(root, why, "C-simulation cache entry")
        ensure_dir(root.parent)
        sweep_stale(root.parent, r"\.build-[a-z0-9_]{8}")  # left by killed builds
        stage = Path(tempfile.mkdtemp(prefix=".build-", dir=root.parent))
        try:
            shutil.copytree(tmp, stage, dirs_exist_ok=True)
            inc = ["-isystem", str(ap), "-I", str(stage / "src")]
            _run(
                [
                    cxx,
                    *CXXFLAGS,
                    *inc,
                    "-c",
                    str(stage / "src" / "cepd_top.cpp"),
                    "-o",
                    str(stage / "engine.o"),
                ]
            )
            _run(
                [
                    cxx,
                    *CXXFLAGS,
                    "-shared",
                    "-I",
                    str(stage / "src"),
                    str(stage / "tb" / "cepd_sim.cpp"),
                    str(stage / "engine.o"),
                    "-o",
                    str(stage / "libcepd_sim.so"),
                ]
            )
            sums = {name: file_digest(stage / name) for name in BINARIES}
            (stage / DIGESTS).write_text(json.dumps(sums, indent=1) + "\n")
            try:
                stage.rename(root)  # atomic: a half-built cache entry never looks complete
            except OSError:  # built concurrently by someone else
                shutil.rmtree(stage, ignore_errors=True)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return SimBuild(root, root / "engine.o", lib)


def _entry_damaged(root: Path) -> str | None:
    """Why a cached engine build cannot be used (None: it can): it must be a folder whose
    binaries have the SHA-256 digests recorded when they were compiled."""
    if root.is_symlink() or not root.is_dir():
        return "not a folder"
    try:
        sums = json.loads((root / DIGESTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {DIGESTS}"
    if not isinstance(sums, dict):
        return f"{DIGESTS} is not a table"
    for name in BINARIES:
        path = root / name
        if path.is_symlink() or not path.is_file():
            return f"{name} is missing"
        if sums.get(name) != file_digest(path):
            return f"{name} does not match its recorded digest"
    return None


def build_testbench(sim: SimBuild, tb_dir: Path, out: Path) -> Path:
    """Link the testbench (with a model's model_info.h in ``tb_dir``) against the engine."""
    _run(
        [
            _compiler(),
            *CXXFLAGS,
            "-I",
            str(sim.src),
            "-I",
            str(tb_dir),
            str(tb_dir / "tb_main.cpp"),
            str(sim.engine_obj),
            "-o",
            str(out),
        ]
    )
    return out


def run_testbench(tb: Path, blob: Path, images_q: np.ndarray, out_words: int, workdir: Path) -> np.ndarray:
    """Run the testbench executable on quantised images (N, ...); returns (N, out_words) int16."""
    n = images_q.shape[0]
    inp, outp = workdir / "csim_input.bin", workdir / "csim_output.bin"
    np.ascontiguousarray(images_q, dtype="<i2").tofile(inp)
    r = subprocess.run([str(tb), str(blob), str(inp), str(outp), str(n)], capture_output=True, text=True)
    if r.returncode != 0:
        raise CEPDError(f"C-simulation failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return np.fromfile(outp, dtype="<i2").reshape(n, out_words)


# -- the engine behind its registers, for driver.py (a pynq stand-in) ------------------------------
class SimBuffer(np.ndarray):
    """A numpy buffer with the attributes driver.py uses from ``pynq.allocate``."""

    physical_address: int = 0

    def flush(self) -> None:  # caches are coherent in simulation
        pass

    def invalidate(self) -> None:
        pass

    def freebuffer(self) -> None:
        pass


class SimDevice:
    """What driver.py needs from an overlay: ``allocate`` and register ``write``/``read``,
    served by the C-simulation library (the engine runs synchronously on ap_start)."""

    def __init__(self, sim: SimBuild) -> None:
        lib = ctypes.CDLL(str(sim.lib))
        lib.cepd_sim_map.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64]
        lib.cepd_sim_write.argtypes = [ctypes.c_uint32, ctypes.c_uint32]
        lib.cepd_sim_read.argtypes = [ctypes.c_uint32]
        lib.cepd_sim_read.restype = ctypes.c_uint32
        lib.cepd_sim_reset()
        self.lib = lib
        self._next = 0x1000_0000
        self._keep: list[np.ndarray] = []

    def allocate(self, shape, dtype) -> SimBuffer:
        buf = np.zeros(shape, dtype=dtype).view(SimBuffer)
        buf.physical_address = self._next
        if self.lib.cepd_sim_map(self._next, buf.ctypes.data, buf.nbytes) != 0:
            raise CEPDError("simulation: overlapping buffer mapping")
        self._next += (buf.nbytes + 0xFFFF) & ~0xFFFF
        self._keep.append(buf)
        return buf

    def write(self, offset: int, value: int) -> None:
        if self.lib.cepd_sim_write(offset, value & 0xFFFFFFFF) != 0:
            raise CEPDError(f"simulation: bad register write at 0x{offset:02x}")

    def read(self, offset: int) -> int:
        return int(self.lib.cepd_sim_read(offset))
