"""DeepLabV3 (Chen et al. 2017) with torchvision's head (``torchvision.models.segmentation.deeplabv3``)
on a small dilated ResNet-18 backbone (output stride 8).

Idioms kept: ``x.shape[-2:]`` read at run time as the size of ``F.interpolate(..., mode="bilinear",
align_corners=False)`` (in the ASPP image-pooling branch and for the final upsampling to the input
size), the ASPP branches in an ``nn.ModuleList`` joined by ``torch.cat(_res, dim=1)``, ``ASPPConv``
and ``ASPPPooling`` as ``nn.Sequential`` subclasses (the latter looping over ``self`` in its own
``forward``), ``nn.AdaptiveAvgPool2d(1)`` and non-inplace ReLUs as torchvision's head has them. The
backbone replaces the strides of its last two stages by dilation the way torchvision's ResNet does
(``replace_stride_with_dilation=[False, True, True]``); its dilated 3x3 convs use
``padding="same"``, the in-place residual ``out += identity`` and one reused ``self.relu``. Unlike
torchvision, the model returns the logits tensor, not ``{"out": logits}``, and has no auxiliary head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 conv; a dilated one (stride 1) pads ``"same"``."""
    padding: int | str = "same" if dilation > 1 else 1
    return nn.Conv2d(in_planes, out_planes, 3, stride, padding, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block with optional dilation, torchvision's forward (``out += identity``)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class DilatedResNet(nn.Module):
    """ResNet-18 feature extractor at output stride 8 (layers 3 and 4 dilated instead of strided)."""

    def __init__(
        self, layers: tuple[int, ...] = (2, 2, 2, 2), dilate: tuple[bool, ...] = (False, True, True)
    ) -> None:
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=dilate[2])
        self.out_channels = 512
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x


class ASPPConv(nn.Sequential):
    """A dilated 3x3 ASPP branch: Conv (padding = dilation) - BN - ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """The ASPP image-pooling branch: global pool, 1x1 Conv-BN-ReLU, bilinear upsampling back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch, projected."""

    def __init__(self, in_channels: int, atrous_rates: tuple[int, ...], out_channels: int = 256) -> None:
        super().__init__()
        modules: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
            )
        ]
        rates = tuple(atrous_rates)
        for rate in rates:
            modules.append(ASPPConv(in_channels, out_channels, rate))
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: Tensor) -> Tensor:
        _res = []
        for conv in self.convs:
            _res.append(conv(x))
        res = torch.cat(_res, dim=1)
        return self.project(res)


class DeepLabHead(nn.Sequential):
    """torchvision's DeepLabV3 head: ASPP, 3x3 Conv-BN-ReLU, 1x1 classifier conv."""

    def __init__(
        self, in_channels: int, num_classes: int, atrous_rates: tuple[int, ...] = (12, 24, 36)
    ) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, num_classes, 1),
        )


class DeepLabV3(nn.Module):
    """Backbone, DeepLab head, bilinear upsampling of the logits to the input's size."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        x = self.classifier(features)
        x = F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
        return x


def deeplabv3(num_classes: int = 21) -> DeepLabV3:
    """DeepLabV3 on a dilated ResNet-18 (output stride 8), ASPP rates 12/24/36, 21 classes (VOC)."""
    backbone = DilatedResNet()
    return DeepLabV3(backbone, DeepLabHead(backbone.out_channels, num_classes))
