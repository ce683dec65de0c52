"""TVM target: op coverage, host target selection, every kernel family against torch. Needs
apache-tvm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install cepd-deploy[tvm])")

from cepd_deploy.errors import CEPDError  # noqa: E402
from cepd_deploy.plan.ir import Op  # noqa: E402
from cepd_deploy.targets.tvm import host  # noqa: E402
from cepd_deploy.targets.tvm.conv import ConvShape, ConvTiling, applies, choose_tiling, conv  # noqa: E402
from cepd_deploy.targets.tvm.gemm import Tiling, gemm, pixel_chunk  # noqa: E402
from cepd_deploy.targets.tvm.gemm import choose_tiling as gemm_tiling  # noqa: E402
from cepd_deploy.targets.tvm.kernel import Call, Epi, EpiValues  # noqa: E402
from cepd_deploy.targets.tvm.simple import concat, eltwise, global_avgpool, permute, pool  # noqa: E402

TOL = 1e-4


def run_call(call: Call, inputs: list[np.ndarray]) -> np.ndarray:
    """Build one kernel with its hand schedule and run it."""
    host.configure_runtime()  # the thread pool as build/load set it up
    lib = tvm.compile(tvm.IRModule({"main": call.kernel.scheduled()}), target=host.make_target("llvm"))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in [*inputs, *call.consts]]
    out = tvm.runtime.tensor(np.zeros([int(s) for s in call.kernel.output.shape], np.float32), dev)
    lib["main"](*args, out)
    return out.numpy()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def rand(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- coverage and targets ------------------------------------------------------------------
def test_every_op_the_target_claims_has_a_handler():
    from cepd_deploy.targets import get
    from cepd_deploy.targets.tvm.lowering import HANDLERS

    t = get("tvm")
    assert t.name == "tvm" and get("llvm") is t
    assert set(t.ops) == set(HANDLERS) == set(Op)


@pytest.mark.parametrize(
    ("flags", "vendor", "mcpu", "lanes"),
    [
        ({"avx512f", "avx512bw", "avx512vl", "avx2", "fma"}, "AuthenticAMD", "znver4", 16),
        ({"avx512f", "avx512bw", "avx512vl", "avx2", "fma"}, "GenuineIntel", "skylake-avx512", 16),
        ({"avx2", "fma"}, "GenuineIntel", "haswell", 8),
        ({"sse4_2"}, "GenuineIntel", "x86-64", 4),
    ],
)
def test_host_mcpu_follows_the_cpu_flags(flags, vendor, mcpu, lanes):
    assert host.host_mcpu(frozenset(flags), vendor) == mcpu
    assert host.simd_lanes(frozenset(flags)) == lanes


def test_targets_are_json_dicts():
    d = host.describe("llvm", threads=3)
    assert d["kind"] == "llvm" and d["num-cores"] == 3 and d["mcpu"] == host.host_mcpu()
    assert str(host.make_target("llvm").kind) == "llvm"
    assert host.make_target("cuda", arch="sm_90").attrs["arch"] == "sm_90"
    with pytest.raises(CEPDError, match="valid: llvm, cuda"):
        host.describe("vulkan")


# -- kernels --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("o", "k", "p", "tiling"),
    [
        (17, 64, 256, None),  # the cost model's pick
        (40, 24, 64, Tiling("p", 6, 32)),  # pixels as vectors, O not a multiple of rows
        (33, 20, 49, Tiling("p", 12, 16)),  # pixels padded to whole vectors (49 -> 64)
        (40, 24, 49, Tiling("o", 7, 32)),  # output channels as vectors, written back transposed
        (20, 16, 10, Tiling("o", 4, 16)),  # pixels not a multiple of rows: guarded loads
    ],
)
def test_gemm_tilings_with_bias_residual_relu(o, k, p, tiling):
    x, w, b, res = rand(2, k, p), rand(o, k, seed=1), rand(o, seed=2), rand(2, o, p, seed=3)
    call = gemm(2, k, p, w, Epi(bias=True, residual=True, act="relu"), EpiValues(bias=b), tiling=tiling)
    ref = np.maximum(np.einsum("ok,bkp->bop", w, x) + b[None, :, None] + res, 0)
    assert rel(run_call(call, [x, res]), ref) <= TOL


@pytest.mark.parametrize(("o", "k", "p"), [(13, 8, 300), (24, 40, 520), (7, 1100, 70)])
def test_gemm_in_pixel_chunks(o, k, p):
    """The AVX2 schedule: pixel blocks in chunks (a tail chunk and a tail block; K = 1100: one
    block a chunk), epilogue with the residual."""
    x, w, b, res = rand(2, k, p), rand(o, k, seed=1), rand(o, seed=2), rand(2, o, p, seed=3)
    assert pixel_chunk(k, 16, 8) == max(1, min(16, 16384 // (16 * k))) and pixel_chunk(k, 16, 16) == 1
    call = gemm(2, k, p, w, Epi(bias=True, residual=True, act="relu"), EpiValues(bias=b), simd=8)
    ref = np.maximum(np.einsum("ok,bkp->bop", w, x) + b[None, :, None] + res, 0)
    assert rel(run_call(call, [x, res]), ref) <= TOL


def test_gemm_folds_the_scatter_add_and_scale():
    """y = W x + s[inv] (the S branch's rows, one zero row), then scale, bias, relu6."""
    o, k, p, kappa = 24, 16, 64, 5
    index = np.array([3, 0, 17, 9, 23])
    x, w = rand(1, k, p), rand(o, k, seed=1)
    s = np.concatenate([rand(1, kappa, p, seed=2), np.zeros((1, 1, p), np.float32)], axis=1)
    inv = np.full(o, kappa, np.int32)
    inv[index] = np.arange(kappa)
    scale, bias = rand(o, seed=3), rand(o, seed=4)
    epi = Epi(scale=True, bias=True, act="relu6", scatter=kappa)
    call = gemm(1, k, p, w, epi, EpiValues(scale, bias, inv))
    y = w @ x[0]
    y[index] += s[0, :kappa]
    ref = np.clip(y * scale[:, None] + bias[:, None], 0, 6)[None]
    assert rel(run_call(call, [x, s]), ref) <= TOL


CONVS = [
    ConvShape(1, 8, 12, 12, 8, (3, 3), (1, 1), (1, 1)),
    ConvShape(2, 5, 9, 11, 7, (3, 5), (1, 1), (1, 2)),  # non-square kernel, odd sizes
    ConvShape(1, 6, 13, 13, 10, (3, 3), (2, 2), (1, 1)),  # strided
    ConvShape(1, 4, 10, 10, 6, (3, 3), (1, 1), (2, 2), (2, 2)),  # dilated
    ConvShape(1, 3, 23, 23, 16, (7, 7), (2, 2), (3, 3)),  # a stem
    ConvShape(1, 16, 8, 8, 16, (3, 3), (1, 1), (1, 1), groups=16),  # depthwise
    ConvShape(1, 12, 9, 9, 12, (3, 3), (2, 2), (1, 1), groups=12),  # strided depthwise
    ConvShape(1, 6, 7, 7, 12, (3, 3), (1, 1), (1, 1), groups=6),  # channel multiplier 2
    ConvShape(1, 8, 9, 9, 12, (3, 3), (1, 1), (1, 1), groups=2),  # grouped (AlexNet-style)
    ConvShape(1, 8, 10, 10, 12, (1, 1), (2, 2)),  # strided 1x1
]


def _conv_cases():
    """Every shape with the cost model's tiling, and with each tiling that applies to it."""
    for s in CONVS:
        rows = math.gcd(s.cout_g, 4) if s.groups > 1 else 4
        for t in (None, ConvTiling("flat", rows, 16), ConvTiling("direct", 3, 16), ConvTiling("plain")):
            if t is None or applies(t, s):
                yield pytest.param(s, t, id=f"{s.key}-{t.key if t else 'auto'}")


@pytest.mark.parametrize(("s", "tiling"), list(_conv_cases()))
def test_conv_kernels(s: ConvShape, tiling: ConvTiling | None):
    x, w, b = rand(s.batch, s.cin, s.h, s.w), rand(s.cout, s.cin_g, *s.kernel, seed=1), rand(s.cout, seed=2)
    call = conv(s, w, Epi(bias=True, act="relu"), EpiValues(bias=b), tiling=tiling)
    ref = F.relu(
        F.conv2d(
            torch.from_numpy(x),
            torch.from_numpy(w),
            torch.from_numpy(b),
            s.stride,
            s.padding,
            s.dilation,
            s.groups,
        )
    ).numpy()
    assert rel(run_call(call, [x]), ref) <= TOL


DEGENERATE_CONVS = [  # outputs of one pixel, row or column; one input channel per group
    ConvShape(1, 8, 2, 2, 8, (3, 3), (2, 2), (1, 1), groups=8),
    ConvShape(1, 8, 1, 1, 8, (3, 3), (1, 1), (1, 1), groups=2),
    ConvShape(1, 4, 1, 1, 4, (1, 1), groups=4),
    ConvShape(1, 3, 1, 1, 5, (1, 1)),
    ConvShape(1, 3, 1, 7, 6, (3, 3), (1, 1), (1, 1), groups=3),
    ConvShape(2, 5, 7, 1, 5, (3, 1), (2, 1), (1, 0), groups=5),
]


@pytest.mark.parametrize("s", DEGENERATE_CONVS, ids=lambda s: s.key)
def test_conv_tilings_on_degenerate_shapes(s: ConvShape):
    """Every tiling that applies schedules (no unit loop vectorised) and computes the conv."""
    x, w = rand(s.batch, s.cin, s.h, s.w), rand(s.cout, s.cin_g, *s.kernel, seed=1)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, s.stride, s.padding, s.dilation, s.groups)
    tilings = [ConvTiling("flat", 1, 16), ConvTiling("direct", 1, 16), ConvTiling("plain")]
    for t in (t for t in tilings if applies(t, s)):
        assert rel(run_call(conv(s, w, Epi(), EpiValues(), tiling=t), [x]), ref.numpy()) <= TOL, t


@pytest.mark.parametrize("o", [1, 3])
def test_gemm_on_one_pixel(o):
    """p = 1 with one output row per tile: nothing is left to vectorise in the epilogue."""
    x, w = rand(2, 5, 1), rand(o, 5, seed=1)
    for t in (None, Tiling("p", 1, 16), Tiling("o", 1, 16)):
        assert rel(run_call(gemm(2, 5, 1, w, Epi(), EpiValues(), tiling=t), [x]), w @ x) <= TOL, t


# ResNet-50's conv and GEMM shapes: (cin, cout, map, stride) and (O, K, P)
R50_CONVS = [(64, 64, 56, 1), (128, 128, 28, 1), (256, 256, 14, 1), (512, 512, 7, 1), (128, 128, 56, 2),
             (256, 256, 28, 2), (512, 512, 14, 2)]  # fmt: skip
R50_GEMMS = [(256, 64, 3136), (64, 256, 3136), (128, 512, 784), (256, 1024, 196), (512, 2048, 49),
             (70, 1024, 196)]  # fmt: skip


def test_tilings_for_16_registers():
    """AVX2 (8 lanes, 16 registers): at most 2 vectors a row and 12 accumulators, vectors over
    pixels wherever there are enough of them (measured on Zen 3: 12 x 8 tiles, 4-vector rows and
    vectors over channels ran at about half the rate); AVX-512's choices as measured on Zen 4."""
    for cin, cout, hw, st in R50_CONVS:
        s = ConvShape(1, cin, hw, hw, cout, (3, 3), (st, st), (1, 1))
        t = choose_tiling(s, simd=8)
        assert t.lanes == 16 and t.rows * 2 <= 12, (s.key, t.key)
        assert choose_tiling(s, simd=16).key == "direct7x32"
    for o, k, p in R50_GEMMS:
        t = gemm_tiling(o, k, p, simd=8)
        assert t.vec == "p" and t.lanes <= 16 and t.rows * t.lanes // 8 <= 12, (o, k, p, t.key)
    assert gemm_tiling(1000, 2048, 1, simd=8).vec == "o"  # one pixel: the vector runs over channels
    assert gemm_tiling(256, 64, 3136, simd=16).key == "p16x16"
    assert gemm_tiling(128, 512, 784, simd=16).key == "o7x32"


def test_conv_rejects_a_tiling_that_does_not_apply():
    with pytest.raises(ValueError, match="does not apply"):
        conv(CONVS[2], rand(10, 6, 3, 3), Epi(), EpiValues(), tiling=ConvTiling("flat", 2, 16))


def test_conv_tiling_choice_respects_constraints():
    assert choose_tiling(ConvShape(1, 16, 9, 9, 16, (3, 3), (2, 2), (1, 1), groups=16)).kind == "plain"
    assert choose_tiling(ConvShape(1, 32, 56, 56, 6, (3, 3), (1, 1), (1, 1))).kind == "flat"
    strided = choose_tiling(ConvShape(1, 32, 56, 56, 32, (3, 3), (2, 2), (1, 1)))
    assert strided.kind == "direct"


@pytest.mark.parametrize(
    ("kind", "k", "s", "p", "ceil"),
    [
        ("max", 3, 2, 1, False),
        ("avg", 3, 2, 1, True),
        ("max", 2, 2, 0, True),
        ("max", 1, 2, 0, False),
        ("avg", 2, 1, 0, False),
    ],
)
def test_pools_match_torch(kind, k, s, p, ceil):
    x = rand(1, 5, 11, 11)
    fn = F.max_pool2d if kind == "max" else F.avg_pool2d
    ref = fn(torch.from_numpy(x), k, s, p, ceil_mode=ceil).numpy()
    for contiguous in (True, False) if s > 1 else (True,):  # the GPU form reduces output columns only
        call = pool(kind, x.shape, ref.shape, (k, k), (s, s), (p, p), contiguous=contiguous)
        assert rel(run_call(call, [x]), ref) <= TOL


def test_memory_bound_kernels():
    x, x2 = rand(2, 6, 5, 7), rand(2, 6, 5, 7, seed=1)
    sc, sh = rand(6, seed=2), rand(6, seed=3)
    y = run_call(eltwise("affine", x.shape, Epi(act="relu"), EpiValues(), affine=(sc, sh)), [x])
    assert rel(y, np.maximum(x * sc[None, :, None, None] + sh[None, :, None, None], 0)) <= TOL
    assert rel(run_call(eltwise("add", x.shape, Epi(), EpiValues()), [x, x2]), x + x2) <= TOL
    axes, perm = (2, 3), (1, 0)
    ref = x.reshape(2, 2, 3, 5, 7).transpose(0, 2, 1, 3, 4).reshape(x.shape)
    assert rel(run_call(permute(x.shape, axes, perm, Epi(), EpiValues()), [x]), ref) <= TOL
    parts = [rand(1, c, 4, 4, seed=c) for c in (3, 1, 4)]
    assert rel(run_call(concat([p.shape for p in parts]), parts), np.concatenate(parts, 1)) <= TOL
    assert rel(run_call(global_avgpool(x.shape), [x]), x.mean(axis=(2, 3), keepdims=True)) <= TOL
