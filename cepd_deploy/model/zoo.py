"""Model zoo: randomly initialised CIFAR and ImageNet CNNs in pure ``torch.nn``.

Every model is traceable by ``torch.fx.symbolic_trace`` and uses only the ops the
graph-lowering pass understands (Conv2d, BatchNorm2d, ReLU/ReLU6, MaxPool2d,
AvgPool2d, AdaptiveAvgPool2d((1, 1)), Linear, Dropout, torch.flatten,
operator.add, torch.cat along dim 1). Module names follow torchvision
(``conv1``, ``bn1``, ``layer1.0.downsample.0``, ``fc``, ``features``,
``classifier``) so state dicts look familiar.

The public-architecture entries (``mobilenetv3_small``, ``efficientnet_b0``, ``shufflenetv2``,
``densenet121``, ``convnext_tiny``, ``deeplabv3``) are the exception: they live in
:mod:`cepd_deploy.model.archs`, written as their reference code writes them (functional calls,
tensor methods, in-place ops, shape arithmetic), not in the friendly forms above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.model.archs import (
    convnext_tiny,
    deeplabv3,
    densenet121,
    efficientnet_b0,
    mobilenetv3_small,
    shufflenetv2,
)

__all__ = ["ZOO", "ZooEntry", "build_model", "input_shape"]


def _relu() -> nn.ReLU:
    """A non-inplace ReLU (in-place ops confuse the fx lowering)."""
    return nn.ReLU(inplace=False)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free ``k x k`` 'same' conv followed by BatchNorm."""
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """Option-B projection shortcut (1x1 conv + BN), or None when shapes match."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


def _init_weights(model: nn.Module) -> nn.Module:
    """torchvision-style init: Kaiming-normal convs, unit BN, N(0, 0.01) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


# --------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (ResNet-18/20/56)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu = _relu()
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck, stride on the 3x3 conv (ResNet v1.5)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, cout, 1)
        self.relu = _relu()
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Generic ResNet: a stem, one stage per ``blocks`` entry, global pool, fc.

    The CIFAR variant (``imagenet=False``) has a 3x3/16 stem and no max-pool;
    the ImageNet variant has the 7x7/64 stride-2 stem and a 3x3/2 max-pool.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks: list[int],
        widths: list[int],
        num_classes: int,
        imagenet: bool,
    ) -> None:
        super().__init__()
        stem = widths[0]
        if imagenet:
            self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = _relu()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else None
        cin = stem
        for i, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for j in range(n):
                layers.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016), option-B projection shortcuts."""
    return ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], num_classes, imagenet=False)


def resnet56(num_classes: int = 10) -> ResNet:
    """CIFAR ResNet-56 (He et al. 2016), option-B projection shortcuts."""
    return ResNet(BasicBlock, [9, 9, 9], [16, 32, 64], num_classes, imagenet=False)


def resnet18(num_classes: int = 1000) -> ResNet:
    """ImageNet ResNet-18, parameter-identical to torchvision."""
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, imagenet=True)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ImageNet ResNet-50 v1.5 (stride on the 3x3), parameter-identical to torchvision."""
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, imagenet=True)


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` channels, concatenated onto the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = _relu()
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], 1)


def _transition(c: int) -> nn.Sequential:
    """BN-ReLU-Conv1x1-AvgPool2 between dense blocks (no compression)."""
    return nn.Sequential(
        nn.BatchNorm2d(c), _relu(), nn.Conv2d(c, c, 1, bias=False), nn.AvgPool2d(2)
    )


class DenseNet(nn.Module):
    """CIFAR DenseNet (Huang et al. 2017), basic (non-bottleneck) layers."""

    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 3
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=False)]
        for b in range(3):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if b < 2:
                layers.append(_transition(c))
        layers += [nn.BatchNorm2d(c), _relu(), nn.AdaptiveAvgPool2d((1, 1))]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def densenet40(num_classes: int = 10) -> DenseNet:
    """DenseNet-40 (k=12) for CIFAR."""
    return DenseNet(40, 12, num_classes)


# --------------------------------------------------------------------------- MobileNetV2


def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv-BN-ReLU6, torchvision's Conv2dNormActivation layout (indices 0/1/2)."""
    return nn.Sequential(*_conv_bn(cin, cout, k, stride, groups), nn.ReLU6(inplace=False))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [_conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)]
        layers += _conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:  # fixed at construction, so fx-safe
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) in torchvision's layout.

    ``cifar=True`` sets the stride of the stem conv and of the second stage to 1.
    """

    # (expand t, channels c, repeats n, stride s) from Sandler et al. 2018
    CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, cifar: bool = True) -> None:
        super().__init__()
        cin = 32
        layers: list[nn.Module] = [_conv_bn_relu6(3, cin, 3, 1 if cifar else 2)]
        for i, (t, c, n, s) in enumerate(self.CFG):
            s = 1 if (cifar and i == 1) else s
            for j in range(n):
                layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenetv2_cifar(num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 for 32x32 inputs (stem and second stage at stride 1)."""
    return MobileNetV2(num_classes, cifar=True)


# --------------------------------------------------------------------------- VGG / AlexNet

_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                               512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg_features(cfg: list[int | str], batch_norm: bool) -> nn.Sequential:
    """torchvision's VGG ``features``: 3x3 convs (optionally +BN), ReLU, 'M' = max-pool 2/2."""
    layers: list[nn.Module] = []
    cin = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        assert isinstance(v, int)
        layers.append(nn.Conv2d(cin, v, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(_relu())
        cin = v
    return nn.Sequential(*layers)


class _FeaturesClassifier(nn.Module):
    """``classifier(flatten(features(x)))``, the torchvision VGG/AlexNet layout."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _fc_head(cin: int, num_classes: int, hidden: int = 4096) -> nn.Sequential:
    """torchvision VGG head: FC-ReLU-Dropout, FC-ReLU-Dropout, FC."""
    return nn.Sequential(
        nn.Linear(cin, hidden), _relu(), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), _relu(), nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )


def vgg16_cifar(num_classes: int = 10) -> nn.Module:
    """VGG-16 with BN for 32x32 inputs; five max-pools leave 512x1x1, one Linear head."""
    head = nn.Sequential(nn.Linear(512, num_classes))
    return _FeaturesClassifier(_vgg_features(_VGG16_CFG, batch_norm=True), head)


def vgg16(num_classes: int = 1000) -> nn.Module:
    """ImageNet VGG-16 without BN, parameter-identical to torchvision.

    torchvision's AdaptiveAvgPool2d((7, 7)) is omitted: it is the identity at 224x224.
    """
    features = _vgg_features(_VGG16_CFG, batch_norm=False)
    return _FeaturesClassifier(features, _fc_head(512 * 7 * 7, num_classes))


def alexnet(num_classes: int = 1000) -> nn.Module:
    """Original two-tower AlexNet (Krizhevsky et al. 2012) for 227x227 inputs.

    conv2/4/5 use groups=2 as in the paper; local response normalisation is
    omitted (the lowering pass has no LRN). Dropout precedes fc6 and fc7 as in
    torchvision; 6x6x256 features feed fc6.
    """
    features = nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), _relu(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), _relu(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), _relu(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), _relu(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), _relu(), nn.MaxPool2d(3, 2),
    )
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), _relu(),
        nn.Dropout(0.5), nn.Linear(4096, 4096), _relu(),
        nn.Linear(4096, num_classes),
    )
    return _FeaturesClassifier(features, classifier)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its builder, expected (C, H, W) input, default classes and dataset."""

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    dataset: str


_CIFAR, _IMAGENET = (3, 32, 32), (3, 224, 224)

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("resnet20", resnet20, _CIFAR, 10, "cifar"),
        ZooEntry("resnet56", resnet56, _CIFAR, 10, "cifar"),
        ZooEntry("densenet40", densenet40, _CIFAR, 10, "cifar"),
        ZooEntry("mobilenetv2_cifar", mobilenetv2_cifar, _CIFAR, 10, "cifar"),
        ZooEntry("vgg16_cifar", vgg16_cifar, _CIFAR, 10, "cifar"),
        ZooEntry("resnet18", resnet18, _IMAGENET, 1000, "imagenet"),
        ZooEntry("resnet50", resnet50, _IMAGENET, 1000, "imagenet"),
        ZooEntry("vgg16", vgg16, _IMAGENET, 1000, "imagenet"),
        ZooEntry("alexnet", alexnet, (3, 227, 227), 1000, "imagenet"),
        ZooEntry("mobilenetv3_small", mobilenetv3_small, _IMAGENET, 1000, "imagenet"),
        ZooEntry("efficientnet_b0", efficientnet_b0, _IMAGENET, 1000, "imagenet"),
        ZooEntry("shufflenetv2", shufflenetv2, _IMAGENET, 1000, "imagenet"),
        ZooEntry("densenet121", densenet121, _IMAGENET, 1000, "imagenet"),
        ZooEntry("convnext_tiny", convnext_tiny, _IMAGENET, 1000, "imagenet"),
        ZooEntry("deeplabv3", deeplabv3, (3, 512, 512), 21, "voc"),
    ]
}


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise CEPDError(f"unknown model {name!r}; valid names: {', '.join(ZOO)}") from None


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build zoo model ``name`` (randomly initialised); kwargs go to its builder.

    The model carries ``cepd_arch = {"name", "kwargs"}`` so model files can rebuild it.
    """
    model = _entry(name).builder(**kwargs)
    model.cepd_arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input shape zoo model ``name`` expects."""
    return _entry(name).input_shape
