"""Tests for the model zoo: parameter counts, shapes, fx traceability, registry."""

from __future__ import annotations

import functools
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.model.zoo import ZOO, build_model, input_shape

CIFAR = [n for n, e in ZOO.items() if e.dataset == "cifar"]
IMAGENET = [n for n, e in ZOO.items() if e.dataset == "imagenet"]
#: written in their reference code's style (cepd_deploy.model.archs), not the friendly forms; the
#: public-architecture suite (tests/test_public_archs.py) runs them through every stage
PUBLIC = {"mobilenetv3_small", "efficientnet_b0", "shufflenetv2", "densenet121", "convnext_tiny", "deeplabv3"}
FRIENDLY = [n for n in ZOO if n not in PUBLIC]

# Exact counts, identical to torchvision (resnet18/50/vgg16) or hand-computed (alexnet:
# convs 34,944 + 307,456 + 885,120 + 663,936 + 442,624 = 2,334,080;
# fcs 37,752,832 + 16,781,312 + 4,097,000 = 58,631,144; total 60,965,224).
EXACT = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "vgg16": 138_357_544,
    "alexnet": 60_965_224,
    # torchvision's published counts (2.54M, 5.29M, 2.28M, 7.98M) and the official ConvNeXt-T's (28.6M)
    "mobilenetv3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "shufflenetv2": 2_278_604,
    "densenet121": 7_978_856,
    "convnext_tiny": 28_589_128,
    # ResNet-18 without fc 11,176,512 + torchvision's DeepLabHead(512, 21): ASPP 1x1 131,584,
    # three dilated 3x3 3 x 1,180,160, pooling 131,584, project 328,192; 3x3 590,336; 1x1 5,397
    "deeplabv3": 15_904_085,
}

# (reference, relative tolerance) for the CIFAR models, 10 classes.
APPROX = {
    # He et al. 2016 Table 6: 0.27M / 0.85M. Option-B projections add
    # (16*32 + 2*32) + (32*64 + 2*64) = 2,752 params to option A's 269,722 / 853,018.
    "resnet20": (270_000, 0.01),
    "resnet56": (850_000, 0.01),
    # Huang et al. 2017 Table 2: DenseNet (L=40, k=12) 1.0M; exact count is 1,059,298
    # (convs + BN + 456*10+10 classifier), so allow +-7%.
    "densenet40": (1_000_000, 0.07),
    # torchvision mobilenet_v2 = 3,504,872 with a 1281*1000 head; swapping in a
    # 1281*10 head gives 3,504,872 - 1,281,000 + 12,810 = 2,236,682 (~2.2M, +-2%).
    "mobilenetv2_cifar": (2_200_000, 0.02),
    # VGG-16 convs 14,714,688 + BN 2*4,224 + Linear 512*10+10 = 14,728,266 (~14.7M).
    "vgg16_cifar": (14_700_000, 0.01),
}

ALLOWED_MODULES = (
    nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.Linear, nn.Dropout,
)
ALLOWED_FUNCTIONS = {torch.flatten, operator.add, torch.add, torch.cat, F.relu, F.pad}


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name).eval()


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_covers_all_models() -> None:
    assert set(EXACT) | set(APPROX) == set(ZOO)
    for name, e in ZOO.items():
        assert e.name == name
        assert input_shape(name) == e.input_shape
        assert e.num_classes == {"cifar": 10, "imagenet": 1000, "voc": 21}[e.dataset]
    assert input_shape("resnet20") == (3, 32, 32)
    assert input_shape("resnet50") == (3, 224, 224)
    assert input_shape("alexnet") == (3, 227, 227)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_param_count_exact(name: str) -> None:
    assert _n_params(_model(name)) == EXACT[name]


@pytest.mark.parametrize("name", sorted(APPROX))
def test_param_count_approx(name: str) -> None:
    ref, tol = APPROX[name]
    assert abs(_n_params(_model(name)) - ref) <= tol * ref


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_forward_and_trace(name: str) -> None:
    model = _model(name)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        y_fx = fx.symbolic_trace(model)(x)
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y_fx, y)


def test_public_entries_are_the_archs_package() -> None:
    from cepd_deploy.model import archs

    assert {ZOO[n].builder.__module__.rpartition(".")[0] for n in PUBLIC} == {archs.__name__}
    assert sorted(PUBLIC) == sorted(archs.__all__)


@pytest.mark.parametrize("name", FRIENDLY)
def test_graph_uses_only_lowerable_ops(name: str) -> None:
    gm = fx.symbolic_trace(_model(name))
    mods = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = mods[node.target]
            assert isinstance(mod, ALLOWED_MODULES), (node.target, type(mod))
            if isinstance(mod, nn.AdaptiveAvgPool2d):
                assert mod.output_size in ((1, 1), 1)
            if isinstance(mod, (nn.ReLU, nn.ReLU6)):
                assert not mod.inplace
        elif node.op == "call_function":
            assert node.target in ALLOWED_FUNCTIONS, node.target
            if node.target is torch.cat:
                assert node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 1
        else:
            assert node.op in ("placeholder", "output", "get_attr"), node.op


@pytest.mark.parametrize("name", [*IMAGENET, "deeplabv3"])
def test_imagenet_shapes_on_meta(name: str) -> None:
    # Shape-check the big models without compute: same architecture on the meta device.
    with torch.device("meta"):
        model = build_model(name).eval()  # eval: training BN refuses deeplabv3's 1x1 pooled branch at N=1
        y = fx.symbolic_trace(model)(torch.empty(1, *input_shape(name)))
    want = (1, 21, *input_shape(name)[1:]) if name == "deeplabv3" else (1, 1000)
    assert y.shape == want


def test_resnet18_forward_matches_trace() -> None:
    model = _model("resnet18")
    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        y = model(x)
        y_fx = fx.symbolic_trace(model)(x)
    assert y.shape == (1, 1000)
    torch.testing.assert_close(y_fx, y)


def test_num_classes_forwarded() -> None:
    with torch.device("meta"):
        assert build_model("resnet50", num_classes=7).fc.out_features == 7
    assert build_model("resnet20", num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_unknown_name_lists_valid_options() -> None:
    with pytest.raises(CEPDError) as exc:
        build_model("resnet1000")
    msg = str(exc.value)
    assert "resnet1000" in msg
    assert all(name in msg for name in ZOO)
    with pytest.raises(CEPDError):
        input_shape("nope")
