"""MobileNetV3-Small (Howard et al. 2019) as torchvision writes it (``torchvision.models.mobilenetv3``).

Idioms kept: ``Conv2dNormActivation`` Sequentials with in-place Hardswish/ReLU, squeeze-excitation
with ``F.adaptive_avg_pool2d(input, 1)`` and a Hardsigmoid gate returning ``scale * input``, the
in-place residual ``result += input``, channels rounded by ``_make_divisible``, and the
Linear-Hardswish-Dropout-Linear classifier. 2,542,856 parameters at 1000 classes, as torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from cepd_deploy.model.archs.common import Conv2dNormActivation, SqueezeExcitation, _make_divisible


@dataclass
class InvertedResidualConfig:
    """One bneck row of the paper's Table 2: kernel, expansion, output, SE, activation, stride."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool  # Hardswish ("HS") or ReLU ("RE")
    stride: int
    dilation: int = 1


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: 1x1 expand, kxk depthwise, optional SE, 1x1 linear project."""

    def __init__(self, cnf: InvertedResidualConfig, norm_layer: partial) -> None:
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                Conv2dNormActivation(
                    cnf.input_channels,
                    cnf.expanded_channels,
                    kernel_size=1,
                    norm_layer=norm_layer,
                    activation_layer=activation_layer,
                )
            )
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(
            Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                kernel_size=cnf.kernel,
                stride=stride,
                dilation=cnf.dilation,
                groups=cnf.expanded_channels,
                norm_layer=norm_layer,
                activation_layer=activation_layer,
            )
        )
        if cnf.use_se:
            squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(
                SqueezeExcitation(cnf.expanded_channels, squeeze_channels, scale_activation=nn.Hardsigmoid)
            )
        layers.append(
            Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.out_channels,
                kernel_size=1,
                norm_layer=norm_layer,
                activation_layer=None,
            )
        )
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


def _small_config() -> tuple[list[InvertedResidualConfig], int]:
    """torchvision's ``_mobilenet_v3_conf("mobilenet_v3_small")`` at width 1.0: (bnecks, last_channel)."""
    rows = [  # (in, kernel, expanded, out, SE, HS, stride)
        (16, 3, 16, 16, True, False, 2),
        (16, 3, 72, 24, False, False, 2),
        (24, 3, 88, 24, False, False, 1),
        (24, 5, 96, 40, True, True, 2),
        (40, 5, 240, 40, True, True, 1),
        (40, 5, 240, 40, True, True, 1),
        (40, 5, 120, 48, True, True, 1),
        (48, 5, 144, 48, True, True, 1),
        (48, 5, 288, 96, True, True, 2),
        (96, 5, 576, 96, True, True, 1),
        (96, 5, 576, 96, True, True, 1),
    ]
    adjust = lambda c: _make_divisible(c * 1.0, 8)  # noqa: E731
    cfg = [
        InvertedResidualConfig(adjust(i), k, adjust(e), adjust(o), se, hs, s)
        for i, k, e, o, se, hs, s in rows
    ]
    return cfg, adjust(1024)


class MobileNetV3(nn.Module):
    """torchvision's MobileNetV3: stem, bnecks, 1x1 conv to 6x, pool, flatten, classifier."""

    def __init__(
        self,
        inverted_residual_setting: list[InvertedResidualConfig],
        last_channel: int,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        first = inverted_residual_setting[0].input_channels
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3, first, kernel_size=3, stride=2, norm_layer=norm_layer, activation_layer=nn.Hardswish
            )
        ]
        layers += [InvertedResidual(cnf, norm_layer) for cnf in inverted_residual_setting]
        lastconv_input_channels = inverted_residual_setting[-1].out_channels
        lastconv_output_channels = 6 * lastconv_input_channels
        layers.append(
            Conv2dNormActivation(
                lastconv_input_channels,
                lastconv_output_channels,
                kernel_size=1,
                norm_layer=norm_layer,
                activation_layer=nn.Hardswish,
            )
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_output_channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def mobilenetv3_small(num_classes: int = 1000) -> MobileNetV3:
    """MobileNetV3-Small (width 1.0), parameter-identical to torchvision's ``mobilenet_v3_small``."""
    cfg, last_channel = _small_config()
    return MobileNetV3(cfg, last_channel, num_classes)
