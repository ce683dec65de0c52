"""Peak resident memory of one runtime running one model, each measured in a process of its own.

The method: bench's runner for a (target, model) leaves its deployable artifact in a folder (the
ONNX file, or the TVM build); a fresh Python process imports the runtime, makes the input batch,
then records its resident set (VmRSS) and resets its high-water mark (``/proc/self/clear_refs``,
5), loads the artifact (session creation: the runtime's copy of the weights, the custom-op
library's packed weights, TVM's library) and runs it ``RUNS`` times (the arena and workspaces grow
on the first runs); then it reads the high-water mark (VmHWM). Two figures per row:

* ``peak_rss_mb``: the process's peak resident set (Python, the runtime, the model, the batch);
* ``model_rss_mb``: that peak minus the resident set before the artifact was loaded: what the
  model costs on that runtime at that batch, with the runtime's own code and Python left out.

``after_rss_mb`` (in the row's details) is the resident set after the runs: below the peak where
loading held copies it then freed (the native path reads the ONNX file into Python to rewrite it).

One process per (runtime, model): no allocator cache, arena or library state of another model
is reused or counted, and the benchmark's own process (torch, every other session) is not in the
figure. Where the kernel cannot reset the mark, the peak falls back to ``ru_maxrss`` (which then
also covers the imports, before the baseline; the payload's ``method`` says so). Linux only
(``/proc``); elsewhere no figure is recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

#: runs of the model in the measuring process (the arena grows on the first ones)
RUNS = 3
#: seconds one measuring process may take
TIMEOUT_S = 600

_BOOT = ("import sys; p = sys.argv.pop(1); sys.path.insert(0, p); "
         "from cepd_deploy.bench.memory import _child; _child(sys.argv[1:])")  # fmt: skip


def artifact(folder: Path) -> tuple[str, Path] | None:
    """(kind, path) of the deployable artifact a runner left under ``folder``: ("tvm", its build
    folder) or ("onnx", the .onnx file); None if there is none (a target that runs in-process)."""
    manifests = sorted(folder.rglob("manifest.json"))
    if manifests:
        return "tvm", manifests[0].parent
    models = sorted(folder.rglob("*.onnx"))
    return ("onnx", models[0]) if models else None


def supported() -> bool:
    """Whether this system reports resident sets the way the measurement reads them (/proc)."""
    return Path("/proc/self/status").is_file()


def measure(target: str, folder: Path, shape: tuple[int, ...], threads: int) -> dict:
    """The peak memory of ``target`` running the artifact under ``folder`` on a batch of ``shape``
    (a fresh process; see the module docstring). Returns ``peak_rss_mb``, ``model_rss_mb``,
    ``base_rss_mb``, ``after_rss_mb`` and ``method``; or ``error`` (one line) where it could not be
    measured."""
    if not supported():
        return {"error": "no /proc on this system"}
    found = artifact(folder)
    if found is None:
        return {"error": f"{target} runs in the benchmark's own process (no artifact to load apart)"}
    kind, path = found
    native = bool(getattr(_target(target), "native", False))
    spec = {"kind": kind, "path": str(path), "shape": list(shape), "threads": threads, "native": native,
            "runs": RUNS}  # fmt: skip
    root = str(Path(__file__).resolve().parents[2])  # the folder holding this cepd_deploy package
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # not the current directory's cepd_deploy
    argv = [sys.executable, *safe_path, "-c", _BOOT, root, json.dumps(spec)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"the measuring process took more than {TIMEOUT_S} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": f"the measuring process failed: {tail[-1] if tail else f'exit {proc.returncode}'}"}
    return json.loads(lines[-1])


def _target(name: str):
    from cepd_deploy import targets

    return targets.get(name)


# -- in the measuring process ----------------------------------------------------------------------
def _status_kb(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if m is None:
        raise OSError(f"/proc/self/status has no {key}")
    return int(m.group(1))


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark to its resident set now (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") <= _status_kb("VmRSS") + 64


def _child(args: list[str]) -> None:
    """The measuring process: load one artifact, run it, print the figures as one JSON line."""
    import gc
    import resource

    import numpy as np

    spec = json.loads(args[0])
    x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
    if spec["kind"] == "tvm":
        import tvm  # noqa: F401  (the runtime's import is part of the baseline, not of the model)

        from cepd_deploy.targets.tvm.runtime import load

        def make():
            return load(spec["path"], threads=spec["threads"])
    else:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        from cepd_deploy.targets.onnx.session import build_session, run_session

        def make():
            sess = build_session(spec["path"], spec["threads"], native=spec["native"])
            return lambda v: run_session(sess, v)

    gc.collect()
    base = _status_kb("VmRSS")
    reset = _reset_peak()
    run = make()
    for _ in range(spec["runs"]):
        run(x)
    after = _status_kb("VmRSS")
    peak = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method = "VmHWM after a reset at the baseline" if reset else "ru_maxrss (peak not reset at the baseline)"
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    figures = {"peak_rss_mb": mb(peak), "model_rss_mb": mb(peak - base), "base_rss_mb": mb(base),
               "after_rss_mb": mb(after)}  # fmt: skip
    print(json.dumps(figures | {"method": method, "runs": spec["runs"]}))
