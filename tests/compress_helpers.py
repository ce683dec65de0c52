"""Shared builders for the compress tests (no tests here)."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """Three 3x3 convs with BN and a classifier, small enough for quick training on 32x32 inputs.

    ``stem_stride`` is the first conv's stride; ``last_bias`` gives the last conv a bias.
    """

    def __init__(self, stem_stride: int = 1, last_bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=last_bias)
        self.bn3 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
