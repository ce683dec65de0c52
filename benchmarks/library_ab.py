"""Two or more builds of the custom-op library on the same CEPD ResNet-50s, in one process.

    cp cepd_deploy/_ort_cepd*.so /tmp/before/      # then change kernels/, pip install -e .
    python benchmarks/library_ab.py /tmp/before/_ort_cepd*.so [--points 0.663 0.461] [--rounds 30]

On a shared machine two runs of one build differ by more than most kernel changes do, so builds
are only compared side by side: each library file is loaded (a copy per path), every model gets a
session per build (set up as ``build_session(..., native=True)`` does: unsupported layers as
standard ops, dense 1x1 convs after native layers moved onto the kernel), and the rounds
interleave dense, then each point's builds in turn (each run warmed by an untimed one). Prints,
per point: the median over rounds of each build's time over the first build's (paired, same
round) and, from onnxruntime's profile (10th percentile of each node over the rounds), the time
of each stage and of each kind of layer (``layerN relu``: the blocks' first conv, ``relu_1``
their KxK, ``relu_2`` their last 1x1 with the residual), with every build over the first. The
installed library is the last build unless ``--no-installed``.
Layers a change does not touch show the noise of the run. Uniform allocation unless
``--allocation`` says otherwise, batch 1, 224x224.
"""

from __future__ import annotations

from cepd_deploy.process import configure

configure()  # OMP_WAIT_POLICY=PASSIVE unless set: before torch loads OpenMP

import argparse  # noqa: E402
import collections  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from onnx_cases import SHAPE, cepd_resnet50, input_array  # noqa: E402

import cepd_deploy as cd  # noqa: E402
from cepd_deploy.bench.machine import describe, machine_info  # noqa: E402
from cepd_deploy.frontend.allocation import ALLOCATIONS  # noqa: E402
from cepd_deploy.targets.onnx import ort_library, prepare, to_model  # noqa: E402
from cepd_deploy.targets.onnx.session import session_options  # noqa: E402

NODE = re.compile(r"layer(\d)\.(\d+)\.(relu(?:_\d)?)/")


def _session(model, library: str | None, threads: int, profiles: str):
    import onnxruntime as ort

    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(profiles) / "ort")
    if library:
        so.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _profile(sess) -> dict[str, float]:
    """Node -> 10th percentile of its kernel time (ms) over the session's runs."""
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    per = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1e3)
    return {n: float(np.percentile(v, 10)) for n, v in per.items()}


def _groups(times: dict[str, float]) -> dict[str, float]:
    """Stage ("layer1.0", "layer1.rest", ...) and layer kind ("layer1 relu_2": fused exports
    only) sums, and "total"."""
    out = collections.Counter()
    for node, t in times.items():
        out["total"] += t
        m = NODE.search(node) or re.search(r"layer(\d)\.(\d+)", node)
        if not m:
            continue
        out[f"layer{m.group(1)}.{'0' if m.group(2) == '0' else 'rest'}"] += t
        if m.re is NODE:
            out[f"layer{m.group(1)} {m.group(3)}"] += t
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("libraries", nargs="+", help="library files to compare (the first is the baseline)")
    ap.add_argument("--no-installed", action="store_true", help="do not add the installed library last")
    ap.add_argument("--points", type=float, nargs="+", default=[0.663, 0.461])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                    help="the CEPD models' rank allocation (a latency-aware one is measured on first use)")
    args = ap.parse_args()
    libs = [str(Path(p).resolve()) for p in args.libraries]
    if not args.no_installed:
        libs.append(ort_library.get_library_path())
    for lib in libs:
        ctypes.CDLL(lib).cepd_tts_set_threads(args.threads)
    profiles = tempfile.mkdtemp(prefix="cepd-library-ab-")  # onnxruntime's profiles, read and removed
    dense = to_model(prepare(cd.lower(cd.build_model("resnet50").eval(), SHAPE)))
    runs = {"dense": _session(dense, None, args.threads, profiles)}
    for f in args.points:
        model = cepd_resnet50(f, allocation=args.allocation, threads=args.threads)
        fused = ort_library.native_model(to_model(prepare(cd.lower(model, SHAPE)), fused=True))
        for i, lib in enumerate(libs):
            runs[(f, i)] = _session(fused, lib, args.threads, profiles)
    x = input_array()
    ms = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, sess in runs.items():
            feed = {sess.get_inputs()[0].name: x}
            sess.run(None, feed)  # warm: the timed run follows a run of the same model
            t = time.perf_counter()
            sess.run(None, feed)
            ms[k].append((time.perf_counter() - t) * 1e3)
    groups = {k: _groups(_profile(s)) for k, s in runs.items()}
    shutil.rmtree(profiles, ignore_errors=True)
    print(describe(machine_info(args.threads)))
    for i, lib in enumerate(libs):
        print(f"build {i}: {lib}")
    d = statistics.median(ms["dense"])
    print(f"dense: median {d:.2f} ms, profile sum {groups['dense']['total']:.2f} ms")
    for f in args.points:
        base = (f, 0)
        ratios = [statistics.median(b / a for a, b in zip(ms[base], ms[(f, i)])) for i in range(len(libs))]
        print(f"\n{f:.1%} FLOPs, whole model, build / build 0 (median of paired rounds): "
              + "  ".join(f"{r:.3f}" for r in ratios))  # fmt: skip
        heads = "  ".join(f"b{i}/b0" for i in range(1, len(libs)))
        print(f"  {'':16s} {'dense ms':>9s} {'build 0 ms':>10s}  {heads}")
        for key in sorted(groups[base], key=lambda k: (k == "total", k)):
            b0 = groups[base][key]
            rel = "  ".join(f"{groups[(f, i)].get(key, 0) / b0:5.3f}" for i in range(1, len(libs)))
            dense_ms = f"{groups['dense'][key]:9.2f}" if key in groups["dense"] else f"{'-':>9s}"
            print(f"  {key:16s} {dense_ms} {b0:10.2f}  {rel}")


if __name__ == "__main__":
    main()
