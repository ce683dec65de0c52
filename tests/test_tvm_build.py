"""TVM target end to end: build -> shared library + manifest -> load -> numpy, checked against
the Plan reference and torch (max error <= 1e-4 x max|y|); errors, atomic output, GPU codegen.
The builds go through the Target (its passes first) or, where a test needs the build function's
``log``, through :func:`cepd_deploy.targets.tvm.build` on a Plan."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install cepd-deploy[tvm])")

import cepd_deploy as cd  # noqa: E402
from cepd_deploy.errors import CEPDError  # noqa: E402
from cepd_deploy.frontend.load import load_plan  # noqa: E402
from cepd_deploy.plan.reference import run as reference  # noqa: E402
from cepd_deploy.targets import tvm as tvm_target  # noqa: E402
from cepd_deploy.targets.tvm import TVM, TVMCuda  # noqa: E402
from cepd_deploy.targets.tvm.runtime import MANIFEST  # noqa: E402
from tests.conftest import randomize_bn  # noqa: E402

TOL = 1e-4


def cepd(name: str, flops: float = 0.5, **kw):
    torch.manual_seed(0)
    return cd.convert(randomize_bn(cd.build_model(name)), flops_remaining=flops, **kw).eval()


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def plan_of(model, shape):
    """The Plan of a torch model for ``shape`` (N, C, H, W)."""
    return load_plan(model, shape, batch=shape[0]).plan


def check_roundtrip(model, out, shape, seed=1) -> dict:
    plan = plan_of(model, shape)
    manifest = TVM().build(plan, out, TVM.Options(verify=True)).figures
    assert max(manifest["verify"]["max_rel_err"].values()) <= TOL
    loaded = tvm_target.load(out)
    x = np.random.default_rng(seed).standard_normal(loaded.input_shape).astype(np.float32)
    y = loaded(x)
    assert rel(y, reference(plan, x).numpy()) <= TOL
    with torch.no_grad():
        assert rel(y, model(torch.from_numpy(x)).numpy()) <= TOL
    return manifest


@pytest.mark.slow
def test_resnet20_cepd_roundtrip(tmp_path):
    model = cepd("resnet20")
    m = check_roundtrip(model, tmp_path / "out", (1, 3, 32, 32))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["manifest.json", "model.so"]  # no temp folder left behind
    on_disk = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert on_disk == m and m["target"]["kind"] == "llvm" and m["output_shape"] == [1, 10]
    assert 0.45 < m["flops_remaining"] < 0.55
    # every CEPD layer's scatter-add is folded into the TT chain's last step: fewer kernels than ops
    assert m["kernels"] < m["ops"]


@pytest.mark.slow
def test_mobilenetv2_cepd_roundtrip(tmp_path):
    check_roundtrip(cepd("mobilenetv2_cifar"), tmp_path / "out", (1, 3, 32, 32))


@pytest.mark.slow
def test_awkward_network_dense_and_batch2(tmp_path, awkward):
    """Odd channels, 3x5 kernels, a channel-multiplier grouped conv, conv bias, strided 1x1."""
    check_roundtrip(awkward, tmp_path / "dense", (2, 3, 15, 17))


@pytest.mark.slow
def test_resnet50ish_cepd_small_batch(tmp_path):
    """ResNet-50's bottlenecks at every stage width (one block per stage, two in stage 2 for an
    identity shortcut), CEPD at 46.1% FLOPs, batch 2 at 64x64: stem, max-pool, strided 3x3 and
    strided 1x1 (subsampled) layers, the 1x1 rewrites, the 7x7 stage, fc."""
    from cepd_deploy.model.zoo import Bottleneck, ResNet

    torch.manual_seed(0)
    model = randomize_bn(ResNet(Bottleneck, [1, 2, 1, 1], [64, 128, 256, 512], 1000, imagenet=True))
    model = cd.convert(model, flops_remaining=0.461, input_shape=(2, 3, 64, 64)).eval()
    check_roundtrip(model, tmp_path / "out", (2, 3, 64, 64))


def test_load_errors(tmp_path):
    with pytest.raises(CEPDError, match="no manifest.json"):
        tvm_target.load(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "cepd-tvm", "version": 99}))
    with pytest.raises(CEPDError, match="version 99"):
        tvm_target.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(CEPDError, match="not valid JSON"):
        tvm_target.load(tmp_path)


def test_build_errors(tmp_path, awkward):
    plan = plan_of(awkward, (1, 3, 15, 17))
    with pytest.raises(CEPDError, match="unknown TVM target"):
        tvm_target.build(plan, tmp_path / "o", target="metal")
    with pytest.raises(CEPDError, match="parent does not exist"):
        tvm_target.build(plan, tmp_path / "a" / "b")
    with pytest.raises(CEPDError, match="takes a Plan, not a"):
        tvm_target.build(awkward, tmp_path / "o")  # models are lowered by the caller
    with pytest.raises(CEPDError, match="input_shape"):
        load_plan(awkward)  # ... which needs the input shape the model does not record
    assert not (tmp_path / "o").exists()


def test_failed_build_leaves_no_manifest(tmp_path, awkward, monkeypatch):
    """A build that fails after compiling (here: verification) leaves nothing looking complete."""
    build_mod = importlib.import_module("cepd_deploy.targets.tvm.build")

    def broken(*a, **k):
        raise CEPDError("TVM output differs from the plan reference")

    monkeypatch.setattr(build_mod, "check_outputs", broken)
    out = tmp_path / "out"
    with pytest.raises(CEPDError, match="differs"):
        tvm_target.build(plan_of(awkward, (1, 3, 15, 17)), out, verify=True)
    assert not (out / MANIFEST).exists() and list(out.iterdir()) == []


def test_input_shape_is_checked(tmp_path, awkward):
    tvm_target.build(plan_of(awkward, (1, 3, 15, 17)), tmp_path)
    model = tvm_target.load(tmp_path, threads=1)
    with pytest.raises(CEPDError, match="does not match"):
        model(np.zeros((1, 3, 16, 16), np.float32))


def cuda_executable(model, shape):
    from cepd_deploy.targets.tvm.build import relax_pipeline
    from cepd_deploy.targets.tvm.gpu import schedule_module
    from cepd_deploy.targets.tvm.host import make_target
    from cepd_deploy.targets.tvm.lowering import lower_plan

    mod, lw = lower_plan(TVMCuda().prepare(plan_of(model, shape)), arch="gpu")
    target = make_target("cuda", arch="sm_80")
    mod = schedule_module(mod, target)
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline()), lw, target


def test_cuda_kernels_are_scheduled_and_generate_code():
    """--target cuda: every kernel gets a GPU schedule (dlight) and CUDA C is generated.
    Running it needs a GPU machine, not available to the test suite."""
    from cepd_deploy.targets.tvm.gpu import cuda_source

    ex, lw, _ = cuda_executable(cepd("resnet20"), (1, 3, 32, 32))
    assert cuda_source(ex).count("__global__") >= len(lw.kernels)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA toolkit) is not installed")
def test_cuda_source_compiles_with_nvcc():
    """The generated CUDA C of a CEPD model compiles for sm_80 (no GPU needed to compile)."""
    import tvm.support.nvcc as nvcc

    from cepd_deploy.targets.tvm.gpu import cuda_source

    ex, _, target = cuda_executable(cepd("resnet20"), (1, 3, 32, 32))
    with target:
        fatbin = nvcc.compile_cuda(cuda_source(ex), target_format="fatbin", compiler="nvcc", arch="sm_80")
    assert len(fatbin) > 10_000


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.mark.slow
def test_tuning_fills_the_cache_and_later_builds_reuse_it(tmp_path, monkeypatch):
    """The mechanism (2 trials on one tiny conv), not real tuning: the cache folder is keyed by
    target and workload, and a second build takes the record without tuning again."""
    from cepd_deploy.targets.tvm import tune

    monkeypatch.setenv(tune.CACHE_ENV, str(tmp_path / "cache"))
    torch.manual_seed(0)
    plan, logs = plan_of(TinyNet().eval(), (1, 4, 8, 8)), []
    m = tvm_target.build(plan, tmp_path / "a", tune_trials=2, verify=True, log=logs.append)
    assert m["tune_trials"] == 2 and max(m["verify"]["max_rel_err"].values()) <= TOL
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1  # one contraction workload; the memory-bound kernels are not tuned
    res = json.loads((folders[0] / tune.RESULT).read_text())
    assert res["trials"] == 2 and res["hand_us"] > 0 and res["tuned_us"] > 0
    assert (folders[0] / "database_tuning_record.json").stat().st_size > 0
    assert any("2 trials, best" in line for line in logs)
    assert m["tuned_kernels"] == int(res["tuned_us"] < tune.MARGIN * res["hand_us"])

    def no_tuning(*a, **k):
        raise AssertionError("tuned again instead of reusing the cache")

    monkeypatch.setattr(tune.Tuner, "_tune_one", no_tuning)
    logs.clear()
    m2 = tvm_target.build(plan, tmp_path / "b", tune_trials=2, verify=True, log=logs.append)
    assert any("cached" in line for line in logs) and m2["tuned_kernels"] == m["tuned_kernels"]


class Bottleneck(torch.nn.Module):
    """1x1 -> 3x3 -> 1x1 with a strided 1x1 projection: the layers the 1x1 rewrites target."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn.Conv2d
        self.a, self.b, self.c = c(32, 24, 1, bias=False), c(24, 24, 3, padding=1, bias=False), c(24, 64, 1)
        self.bn = torch.nn.BatchNorm2d(24)
        self.proj = c(32, 64, 1, stride=2, bias=False)
        self.d = c(64, 64, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.bn(self.a(x)))
        y = torch.relu(self.c(torch.relu(self.b(y))))
        return torch.relu(self.d(y) + self.proj(x))


def test_pointwise_rewrites_keep_the_values(tmp_path):
    """Two 1x1 TT steps merge into one matmul (fewer MACs: the target's pass); a 1x1 S branch
    shares the first step's GEMM; the build verifies against torch and the original Plan."""
    from cepd_deploy.plan.cost import plan_macs
    from cepd_deploy.plan.passes import merge_pointwise
    from cepd_deploy.targets.tvm.lowering import lower_plan

    torch.manual_seed(0)
    model = cd.convert(randomize_bn(Bottleneck()), flops_remaining=0.6, input_shape=(1, 32, 16, 16)).eval()
    plan = cd.lower(model, (1, 32, 16, 16))
    merged = merge_pointwise(plan)
    assert TVM.passes == ("merge_pointwise",) and TVM().prepare(plan).nodes == merged.nodes
    assert len(merged) < len(plan) and plan_macs(merged) < plan_macs(plan)
    x = np.random.default_rng(0).standard_normal(plan.input_shape).astype(np.float32)
    assert rel(reference(merged, x).numpy(), reference(plan, x).numpy()) <= TOL
    _, lw = lower_plan(merged)
    assert lw.joined and lw.folded  # the S branch rides along, the scatter is an epilogue
    check_roundtrip(model, tmp_path / "out", (1, 32, 16, 16))


def test_cli_build_llvm(tmp_path, capsys):
    from cepd_deploy.cli import main

    out = tmp_path / "r20"
    assert main(["build", "--target", "llvm", "resnet20", "-o", str(out), "--verify", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["label"] == "resnet20" and manifest["input_shape"] == [1, 3, 32, 32]
    assert max(manifest["verify"]["max_rel_err"].values()) <= TOL
    assert tvm_target.load(out)(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
    assert main(["build", "--target", "llvm", "no-such-model", "-o", str(tmp_path / "x")]) == 2
    assert "is neither a model file" in capsys.readouterr().err


def test_cuda_build_writes_a_library(tmp_path):
    """The whole --target cuda build: the library holds the kernels' CUDA C, compiled when it
    is loaded on a GPU machine (NVRTC or nvcc); verification needs that GPU."""
    plan = plan_of(TinyNet().eval(), (1, 4, 8, 8))
    m = TVMCuda().build(plan, tmp_path, TVMCuda.Options(verify=True)).figures
    assert m["target"]["kind"] == "cuda" and (tmp_path / "model.so").stat().st_size > 0
    if not tvm.cuda(0).exist:
        assert m["verify"] == {"skipped": "no CUDA device on this machine"}
    else:
        assert max(m["verify"]["max_rel_err"].values()) <= TOL


@pytest.mark.slow
def test_a_tuned_schedule_with_wrong_results_is_never_used(tmp_path, monkeypatch):
    """MetaSchedule does not check results (and TVM has scheduling bugs): the tuner compares
    the tuned kernel's output with ours and drops it when they differ."""
    from cepd_deploy.targets.tvm import tune

    monkeypatch.setenv(tune.CACHE_ENV, str(tmp_path / "cache"))
    real = tune.measure

    def corrupt_the_second(funcs, kernel, target):  # ours first, then the tuned schedule
        (hand, ref), *tuned = real(funcs, kernel, target)
        return [(hand, ref)] + [(0.0, out + 1.0) for _, out in tuned]

    monkeypatch.setattr(tune, "measure", corrupt_the_second)
    logs = []
    shape = (1, 4, 8, 8)
    m = tvm_target.build(plan_of(TinyNet().eval(), shape), tmp_path / "a", tune_trials=1, log=logs.append)
    assert m["tuned_kernels"] == 0 and any("wrong results" in line for line in logs)
    res = json.loads(next((tmp_path / "cache").glob(f"*/{tune.RESULT}")).read_text())
    assert res["tuned_us"] is None


def test_avx2_tilings_run_correctly():
    """The AVX2 build (8-float vectors, 16 registers: other tilings) on this CPU, vs the Plan."""
    from tvm import relax

    from cepd_deploy.targets.tvm.build import relax_pipeline
    from cepd_deploy.targets.tvm.host import configure_runtime
    from cepd_deploy.targets.tvm.lowering import lower_plan

    torch.manual_seed(0)
    model = cd.convert(randomize_bn(Bottleneck()), flops_remaining=0.6, input_shape=(1, 32, 16, 16)).eval()
    plan = cd.lower(model, (1, 32, 16, 16))
    mod, _ = lower_plan(TVM().prepare(plan), simd=8)
    configure_runtime()
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 1})
    with target:
        ex = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline())
    x = np.random.default_rng(0).standard_normal(plan.input_shape).astype(np.float32)
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert rel(y, reference(plan, x).numpy()) <= TOL


def test_tuning_survives_unnamed_handlers_on_metaschedules_logger(tmp_path, monkeypatch):
    """A host application's handler without a name (pytest's log capture is one) sits on
    MetaSchedule's logger: tuning twice in one process still works, and the handler is put back."""
    import logging

    from cepd_deploy.targets.tvm import tune

    monkeypatch.setenv(tune.CACHE_ENV, str(tmp_path / "cache"))
    logger = logging.getLogger(tune.MS_LOGGER)
    foreign = logging.Handler()
    assert foreign.get_name() is None
    logger.addHandler(foreign)
    try:
        for i, channels in enumerate((4, 6)):  # two distinct kernels: two MetaSchedule runs
            net = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU())
            shape = (1, channels, 8, 8)
            m = tvm_target.build(plan_of(net.eval(), shape), tmp_path / f"m{i}", tune_trials=1)
            assert m["tuned_kernels"] >= 0
        assert foreign in logger.handlers
    finally:
        logger.removeHandler(foreign)
