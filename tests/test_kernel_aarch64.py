"""The kernel on AArch64: the sources setup.py builds there (the NEON and generic tile builds, no
x86 source) cross-compiled with Debian's aarch64 toolchain into the numerics driver
``kernels/tests/tts_check.cpp``, run under ``qemu-aarch64`` (user-mode emulation) on layers whose
reference outputs come from the Plan's reference interpreter. The same driver built for this
machine checks the case file and the driver themselves.

Tolerance: max |y - ref| <= 1e-4 x max |ref| + 1e-6 per layer (as tests/test_onnx_native.py).
Only numerics: speed on ARM is not measured here (qemu emulates, it does not time).
.ci/run installs the toolchain and qemu (packages g++-aarch64-linux-gnu, qemu-user).
"""

from __future__ import annotations

import ast
import platform
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_onnx_helpers import OneLayer, random_layer, randomise_bn

import cepd_deploy as cd
from cepd_deploy.native.kernel import layer_arrays
from cepd_deploy.native.layer import KernelLayer
from cepd_deploy.plan.ir import MatmulAttrs, Op
from cepd_deploy.plan.reference import run as run_plan

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "kernels/tests/tts_check.cpp"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
FLAGS = ["-O3", "-std=c++17", "-Wno-psabi", "-pthread", "-Ikernels"]
RTOL, ATOL = 1e-4, 1e-6
WINOGRAD = {"never": 0, "auto": 1, "always": 2}
LINE = re.compile(
    r"case (\d+) isa (\w+) threads (\d) winograd (\d) rc (-?\d+) max_abs_err (\S+) max_abs_ref (\S+)"
)


def setup_sources(machine: str) -> list[str]:
    """setup.py's kernel sources for ``machine`` (its TILE_SOURCES / MACHINES literals)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lit = {
        t.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name) and t.id in ("TILE_SOURCES", "MACHINES")
    }
    return ["kernels/ttsparse.cpp", *lit["TILE_SOURCES"][lit["MACHINES"].get(machine, "other")]]


def test_setup_builds_the_neon_tiles_on_aarch64_and_no_x86_source():
    arm = setup_sources("aarch64")
    assert "kernels/tile_neon.cpp" in arm and "kernels/tile_generic.cpp" in arm
    assert not [s for s in arm if "avx" in s]
    assert setup_sources("arm64") == arm
    assert "kernels/tile_neon.cpp" not in setup_sources("x86_64")
    assert setup_sources("riscv64") == ["kernels/ttsparse.cpp", "kernels/tile_generic.cpp"]


# -- the cases ----------------------------------------------------------------------------------
def _layer_case(seed=3, size=12, batch=1, winograd="auto", **kw) -> dict:
    """A random CEPD layer (BN, residual, activation) lowered to a Plan: the kernel's arrays and the
    reference interpreter's output."""
    case = (
        dict(
            cin=16,
            cout=16,
            kernel=(1, 1),
            stride=1,
            padding=(0, 0),
            kappa=5,
            ranks=[0.5],
            bn=True,
            residual=False,
            act="relu6",
        )
        | kw
    )
    layer = random_layer(
        case["cin"],
        case["cout"],
        case["kernel"],
        ranks_frac=case["ranks"],
        kappa=case["kappa"],
        stride=case["stride"],
        padding=case["padding"],
        seed=seed,
    )
    model = randomise_bn(OneLayer(layer, case["bn"], case["residual"], case["act"]), seed)
    x = (
        np.random.default_rng(size + seed)
        .standard_normal((batch, case["cin"], size, size))
        .astype(np.float32)
    )
    plan = cd.lower(model, x.shape)
    env = run_plan(plan, x, keep=True)
    if not plan.blocks():  # the lowering kept the layer as one dense conv (CEPD would cost more): one step
        (node,) = [n for n in plan.nodes if n.op is Op.CONV]
        e = node.epilogue
        spec, index = KernelLayer.from_conv(node), []
        weights = [plan.consts[w] for w in (node.weights[0], e.scale, e.bias) if w]
        x_name, r_name, y_name = node.inputs[0], node.inputs[-1] if e.residual else None, node.output
    else:
        (block,) = plan.blocks()
        spec, weights, index = layer_arrays(plan, block.layer)
        x_name, r_name, y_name = block.input, block.residual, block.last.output
    assert spec.unsupported() is None, case
    return dict(
        winograd=WINOGRAD[winograd],
        batch=batch,
        desc=spec.desc(),
        weights=weights,
        index=index or [],
        x=env[x_name].numpy(),
        residual=env[r_name].numpy() if r_name else None,
        ref=env[y_name].numpy(),
    )


def _dense_pointwise_case() -> dict:
    """One GEMM without S (a dense 1x1 conv moved onto the kernel: half-panel tasks), batch 2."""
    cin, cout, size = 24, 40, 20
    spec = KernelLayer(
        (2, cin, size, size),
        (2, cout, size, size),
        (MatmulAttrs(cin, cout),),
        bias=True,
        residual=True,
        act="relu",
    )
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((cout, cin)).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((2, cin, size, size)).astype(np.float32)
    r = rng.standard_normal((2, cout, size, size)).astype(np.float32)
    ref = np.maximum(np.einsum("oi,nihw->nohw", w, x) + b[:, None, None] + r, 0)
    return dict(winograd=1, batch=2, desc=spec.desc(), weights=[w, b], index=[], x=x, residual=r, ref=ref)


def kernel_cases() -> list[dict]:
    """Every code path of the kernel: pointwise (whole panels, the column tile, 16-column tails),
    3x3 stride 1 and 2 (the planes, the phase split), a strided 1x1 (subsample), few panels
    (stepwise), a deep K (chunks of 192 rows), S by Winograd (maps of 9 to 36), batches (image by
    image, and a pointwise layer's panels of every image in one dispatch)."""
    kw = dict(kappa=5, ranks=[0.5], act="relu6")
    shapes = [
        dict(kernel=(1, 1), residual=True),
        dict(kernel=(3, 3), padding=(1, 1), residual=True),
        dict(kernel=(3, 3), stride=2, padding=(1, 1)),
        dict(kernel=(1, 1), stride=2),
    ]
    cases = [_layer_case(size=size, **kw, **s) for s in shapes for size in (12, 7, 10)]
    big = dict(cin=32, cout=64, kappa=13, ranks=[0.25], kernel=(3, 3), padding=(1, 1), act="relu")
    point = dict(big, kernel=(1, 1), padding=(0, 0))  # a CEPD pointwise chain (the small one stays dense)
    cases += [_layer_case(size=size, **point) for size in (12, 7, 10)] + [
        _layer_case(size=12, stride=2, **point)
    ]
    cases += [
        _layer_case(size=size, winograd="always", **dict(big, padding=p))
        for p in ((1, 1), (0, 0))
        for size in (9, 14, 36)
    ]
    cases += [_layer_case(size=14, batch=3, **big), _layer_case(size=14, winograd="never", **big)]
    deep = dict(cin=320, cout=64, kappa=6, ranks=[0.1], act="relu", seed=7)
    cases += [_layer_case(size=14, **deep), _layer_case(size=28, **deep), _dense_pointwise_case()]
    # pointwise batches: 3 x 2 panels (each image stepwise), 5 x 2 and 2 x 7 (one dispatch)
    cases += [
        _layer_case(size=7, batch=3, **point),
        _layer_case(size=7, batch=5, **point),
        _layer_case(size=14, batch=2, **deep),
    ]
    return cases


def write_cases(cases: list[dict], path: Path) -> Path:
    """The case file tts_check reads (its layout: the comment at the top of the driver)."""

    def arr(a, dtype) -> bytes:
        a = np.ascontiguousarray(np.asarray(a, dtype=dtype).ravel())
        return struct.pack("<q", a.size) + a.astype(np.dtype(dtype).newbyteorder("<")).tobytes()

    out = [b"CEPDTTS1", struct.pack("<q", len(cases))]
    for c in cases:
        out.append(struct.pack("<qq", c["winograd"], c["batch"]) + arr(c["desc"], np.int64))
        out.append(struct.pack("<q", len(c["weights"])) + b"".join(arr(w, np.float32) for w in c["weights"]))
        res = c["residual"] if c["residual"] is not None else np.zeros(0, np.float32)
        out += [
            arr(c["index"], np.int64),
            arr(c["x"], np.float32),
            arr(res, np.float32),
            arr(c["ref"], np.float32),
        ]
    path.write_bytes(b"".join(out))
    return path


@pytest.fixture(scope="module")
def case_file(tmp_path_factory) -> tuple[Path, int]:
    cases = kernel_cases()
    return write_cases(cases, tmp_path_factory.mktemp("tts") / "cases.bin"), len(cases)


def check_output(out: str, names: tuple[str, ...], ran: tuple[str, ...], ncases: int) -> list[dict]:
    """The driver's runs: its tile builds are ``names``, the ones it ran ``ran`` (each at 1 and 2
    threads, every case), each run within the tolerance."""
    head = out.splitlines()[0]
    assert tuple(head.split()[1:]) == names, head
    runs = [
        dict(zip(("case", "isa", "threads", "wino", "rc", "err", "ref"), m.groups()))
        for m in LINE.finditer(out)
    ]
    assert out.rstrip().endswith(f"done {len(runs)}") and len(runs) == len(ran) * 2 * ncases
    assert {(r["isa"], r["threads"]) for r in runs} == {(i, t) for i in ran for t in "12"}
    for r in runs:
        err, ref = float(r["err"]), float(r["ref"])
        assert r["rc"] == "0" and ref > 0, r
        assert err <= RTOL * ref + ATOL, (
            f"case {r['case']} on {r['isa']} x {r['threads']} threads: {err:g} > tol"
        )
    return runs


def _build(cxx: str, sources: list[str], out: Path) -> Path:
    proc = subprocess.run(
        [cxx, *FLAGS, DRIVER, *sources, "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (Debian: g++-aarch64-linux-gnu, qemu-user; .ci/run installs them)"
        )
    return path


@pytest.mark.slow
def test_aarch64_build_matches_reference_under_qemu(case_file, tmp_path):
    cxx, qemu = _tool(CROSS_CXX), _tool(QEMU)
    exe = _build(cxx, setup_sources("aarch64"), tmp_path / "tts_check")
    head = exe.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # e_machine: EM_AARCH64
    out = _run([qemu, "-L", SYSROOT, str(exe), str(case_file[0])])
    runs = check_output(out, ("scalar", "neon"), ("scalar", "neon"), case_file[1])
    # the Winograd cases ran by Winograd on both builds (the mode is per case)
    assert {r["wino"] for r in runs if int(r["case"]) in range(16, 22)} == {"1"}


@pytest.mark.slow
def test_driver_on_this_machine(case_file, tmp_path):
    """The driver and case file, built for this machine: every tile build its CPU runs."""
    from cepd_deploy import native
    from cepd_deploy.native.library import _lib

    assert native.available(), "the kernel library should be built by `pip install -e .`"
    cxx = shutil.which("g++") or shutil.which("c++")
    exe = _build(cxx, setup_sources(platform.machine().lower()), tmp_path / "tts_check")
    best = _lib().cepd_tts_cpu_isa()
    check_output(_run([str(exe), str(case_file[0])]), native.ISAS, native.ISAS[: best + 1], case_file[1])


def test_tables_name_the_neon_build():
    from cepd_deploy.bench import machine as mach

    assert mach.kernel_isa_for(frozenset({"asimd", "neon", "fp"})) == "neon"
    assert mach.isa_label("neon") == "NEON"
    assert mach._cpu_simd(["neon"]) == "NEON"
