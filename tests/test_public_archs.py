"""Public architectures written as their reference code writes them, through every stage (issue 19):
the torch forward, lowering (the Plan's reference vs torch), convert to 50% FLOPs (CEPD forward vs
its Plan and vs its reconstructed dense weights), the model file, onnxruntime (portable, fused,
custom-op library), TVM, Eyeriss, and the PYNQ-Z1 estimate and C-simulation.

Each architecture is built once per module at a small input (32x32, 64x64 for DeepLabV3) with 10
classes; its Plans are lowered once and shared by every stage (a failure is remembered, and the
stages after it report what they were blocked by). The target stages run the CEPD model's Plan,
against the reference interpreter, within 1e-4 x max|y| (the registry test's tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import fx, nn

from cepd_deploy import build_model, convert, load, save, targets
from cepd_deploy.compress.train import dense_rebuild
from cepd_deploy.frontend.lower import lower
from cepd_deploy.model.archs import (
    convnext_tiny,
    deeplabv3,
    densenet121,
    efficientnet_b0,
    mobilenetv3_small,
    shufflenetv2,
)
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.plan.cost import totals
from cepd_deploy.plan.ir import Plan
from cepd_deploy.plan.reference import run as reference
from tests import archs
from tests.conftest import randomize_bn

TOL = 1e-4  # max abs error <= TOL x max|y| (float targets), as tests/test_targets_registry.py
CLASSES = 10
FLOPS = 0.5


@dataclass(frozen=True)
class Arch:
    """How the suite builds one architecture: ``build(num_classes)``, the input side, whether it
    is a zoo entry (its model file needs no template), and whether the C-simulation runs on it."""

    build: Callable[[int], nn.Module]
    size: int = 32
    zoo: str | None = None
    csim: bool = False


ARCHS: dict[str, Arch] = {
    "mobilenetv2": Arch(archs.mobilenetv2),
    "mobilenetv3_small": Arch(mobilenetv3_small, zoo="mobilenetv3_small", csim=True),
    "efficientnet_b0": Arch(efficientnet_b0, zoo="efficientnet_b0"),
    "shufflenetv2": Arch(shufflenetv2, zoo="shufflenetv2", csim=True),
    "densenet121": Arch(densenet121, zoo="densenet121"),
    "convnext_tiny": Arch(convnext_tiny, zoo="convnext_tiny"),
    "deeplabv3": Arch(deeplabv3, size=64, zoo="deeplabv3"),
    "resnext50_32x4d": Arch(archs.resnext50_32x4d),
    "wrn16_4": Arch(archs.wrn16_4),
    "squeezenet1_1": Arch(archs.squeezenet1_1, csim=True),
    "vgg11_functional": Arch(archs.vgg11_functional),
    "resnet18_idioms": Arch(archs.resnet18_idioms),
    "efficientnet_pytorch_b0": Arch(lambda n: archs.efficientnet_pytorch_b0(n, image_size=32)),
}

#: parameters at 1000 classes (10 for the CIFAR nets), as published: torchvision's model tables
#: (MobileNetV2 3.50M, V3-Small 2.54M, EfficientNet-B0 5.29M, ShuffleNetV2 x1.0 2.28M,
#: DenseNet-121 7.98M, ResNeXt-50 32x4d 25.0M, SqueezeNet 1.1 1.24M, ResNet-18 11.7M), the
#: ConvNeXt paper (ConvNeXt-T 28.6M) and efficientnet_pytorch (the same B0). WRN-16-4: the paper's
#: 2.7M (its Table 1, without biases; this reference code's convs have biases: +3,018).
#: VGG-11-BN for CIFAR: convs 9,220,480 + BN 5,504 + linear 5,130. DeepLabV3: see tests/test_zoo.py.
PUBLISHED = {
    "mobilenetv2": 3_504_872,
    "mobilenetv3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "shufflenetv2": 2_278_604,
    "densenet121": 7_978_856,
    "convnext_tiny": 28_589_128,
    "deeplabv3": 15_904_085,
    "resnext50_32x4d": 25_028_904,
    "wrn16_4": 2_751_146,
    "squeezenet1_1": 1_235_496,
    "vgg11_functional": 9_231_114,
    "resnet18_idioms": 11_689_512,
    "efficientnet_pytorch_b0": 5_288_548,
}
CIFAR_ONLY = {"wrn16_4", "vgg11_functional"}  # 32x32 nets: the 1000-class count is not the published one
ONNX = ("onnxruntime", "onnxruntime-fused", "onnxruntime-native")
NAMES = list(ARCHS)
CSIM = [n for n, a in ARCHS.items() if a.csim]


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, LayerNorm affines and layer scales (ConvNeXt's gamma starts
    at 1e-6, which would hide its whole residual branch from every comparison)."""
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] == "gamma":
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


class Case:
    """One architecture's model, input and Plans, each made on first use and kept (a failure too:
    the stage that made it shows the error, later stages say they are blocked by it)."""

    def __init__(self, name: str, arch: Arch) -> None:
        self.name, self.arch = name, arch
        self.shape = (1, 3, arch.size, arch.size)
        self._memo: dict[str, tuple[bool, object]] = {}

    def _get(self, key: str, make: Callable[[], object]):
        if key not in self._memo:
            try:
                self._memo[key] = (True, make())
            except Exception as exc:
                self._memo[key] = (False, exc)
                raise
        ok, value = self._memo[key]
        if not ok:
            pytest.fail(f"blocked: {key} failed ({_first_line(value)})", pytrace=False)
        return value

    def fresh(self) -> nn.Module:
        """A newly built dense model with the suite's weights (seeded)."""
        torch.manual_seed(0)
        if self.arch.zoo:
            model = build_model(self.arch.zoo, num_classes=CLASSES)
        else:
            model = self.arch.build(CLASSES)
        return randomize_norms(model)

    @property
    def model(self) -> nn.Module:
        return self._get("build", self.fresh)

    @property
    def x(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(1))

    @property
    def dense_plan(self) -> Plan:
        return self._get("lower", lambda: lower(self.model, self.shape))

    @property
    def cepd(self) -> nn.Module:
        return self._get(
            "convert", lambda: convert(self.model, flops_remaining=FLOPS, input_shape=self.shape).eval()
        )

    @property
    def cepd_plan(self) -> Plan:
        return self._get("lower(cepd)", lambda: lower(self.cepd, self.shape))

    def want(self) -> np.ndarray:
        """The reference interpreter's output of the CEPD Plan: the oracle of every target."""
        return self._get("reference(cepd)", lambda: reference(self.cepd_plan, self.x.numpy()).numpy())


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {name: Case(name, arch) for name, arch in ARCHS.items()}


@pytest.fixture(scope="module")
def csim_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")  # the compiled engine, shared by the csim cells


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _output_shape(case: Case) -> tuple[int, ...]:
    return (1, CLASSES, *case.shape[2:]) if case.name == "deeplabv3" else (1, CLASSES)


# -- the definitions ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_published_parameter_count(name):
    classes = CLASSES if name in CIFAR_ONLY else (21 if name == "deeplabv3" else 1000)
    with torch.device("meta"):  # shapes only
        model = ARCHS[name].build(classes)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_torch_forward_and_fx_trace(name, cases):
    case = cases[name]
    with torch.no_grad():
        y = case.model(case.x)
        y_fx = fx.symbolic_trace(case.model)(case.x)
    assert y.shape == _output_shape(case) and torch.isfinite(y).all()
    torch.testing.assert_close(y_fx, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))


def test_efficientnet_pytorch_is_what_the_suite_assumes():
    """What torch.fx makes of efficientnet_pytorch (the idioms the front end has to take): a
    ``Conv2dStaticSamePadding`` is traced through into its ``ZeroPad2d`` (or ``Identity``) and an
    ``F.conv2d`` reading the weight directly; the memory-efficient Swish (an autograd Function) is
    traced into ``x * torch.sigmoid(x)``; ``set_swish(memory_efficient=False)`` gives ``nn.SiLU``."""
    from efficientnet_pytorch.utils import Conv2dStaticSamePadding

    model = archs.efficientnet_pytorch_b0(CLASSES, image_size=32).eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, Conv2dStaticSamePadding)]
    assert len(convs) == 81 and all(
        type(m) is not nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d)
    )
    gm = fx.symbolic_trace(model)
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    functions = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert functions.count(torch.conv2d) == 81 and not any(n.target in convs for n in gm.graph.nodes)
    assert kinds.count("ZeroPad2d") == 17 and "SiLU" not in kinds
    assert functions.count(torch.sigmoid) == 49 + 16  # 49 swishes, 16 squeeze-excitation gates
    model.set_swish(memory_efficient=False)
    gm = fx.symbolic_trace(model)
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds.count("SiLU") == 49  # 17 shared modules (one per block, one at the top), 49 calls
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"].count(torch.sigmoid) == 16


# -- (a) lowering --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_lower_matches_torch(name, cases):
    case = cases[name]
    plan = case.dense_plan
    with torch.no_grad():
        y = case.model(case.x)
    assert rel_err(reference(plan, case.x), y) < TOL


# -- (b) convert -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_b_convert_matches_its_plan_and_its_weights(name, cases):
    case = cases[name]
    cepd, plan = case.cepd, case.cepd_plan
    assert any(isinstance(m, CEPDConv2d) for m in cepd.modules())
    assert totals(plan)["flops_remaining"] == pytest.approx(FLOPS, abs=0.01)
    x = case.x
    with torch.no_grad():
        y = cepd(x)
        with dense_rebuild(cepd):  # every CEPD conv as one dense conv of its rebuilt weight L + S
            y_dense = cepd(x)
    assert rel_err(reference(plan, x), y) < TOL
    assert rel_err(y_dense, y) < TOL


# -- (c) the model file ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_c_save_load_round_trip(name, cases, tmp_path):
    case = cases[name]
    cepd = case.cepd
    path = save(cepd, tmp_path / "m.pt", input_shape=case.shape[1:])
    again = load(path) if case.arch.zoo else load(path, template=case.fresh())
    a, b = cepd.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        (
            cepd(case.x),
            again(case.x),
        )  # a CEPD conv's first forward may differ from its later ones in the last bit
        assert torch.equal(cepd(case.x), again(case.x))


# -- (d, e) runtimes ---------------------------------------------------------------------------
def _check_runner(case: Case, target: str, tmp_path: Path) -> None:
    plan, want = case.cepd_plan, case.want()
    y = np.asarray(targets.get(target).runner(plan, 1, tmp_path)(case.x.numpy()))
    assert y.shape == want.shape
    assert np.abs(y - want).max() <= TOL * np.abs(want).max()


@pytest.mark.slow
@pytest.mark.parametrize("target", ONNX)
@pytest.mark.parametrize("name", NAMES)
def test_d_onnxruntime(name, target, cases, tmp_path):
    _check_runner(cases[name], target, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_e_tvm(name, cases, tmp_path):
    _check_runner(cases[name], "tvm", tmp_path)


# -- (f, g) accelerators -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_f_eyeriss_estimate(name, cases):
    est = targets.get("eyeriss").estimate(cases[name].cepd_plan)
    assert math.isfinite(est.latency_ms) and est.latency_ms > 0 and est.text


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_g_pynq_estimate(name, cases):
    est = targets.get("pynq-z1").estimate(cases[name].cepd_plan)
    assert math.isfinite(est.latency_ms) and est.latency_ms > 0 and est.text


@pytest.mark.slow
@pytest.mark.parametrize("name", CSIM)
def test_g_pynq_csim_is_bit_exact(name, cases, tmp_path, csim_cache, monkeypatch):
    monkeypatch.setenv("CEPD_DEPLOY_CACHE", str(csim_cache))
    target = targets.get("pynq-z1")
    built = target.build(cases[name].cepd_plan, tmp_path / "p", target.options(csim=True, golden=1, calib=2))
    c = built.figures["csim"]
    assert built.ok, f"{built.problem}: {c}"
    assert c["bit_exact"] and c["mismatches"] == 0 and c["within_tolerance"], c
