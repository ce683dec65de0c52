"""Public-architecture CNNs written the way their reference code writes them (torchvision, the
official ConvNeXt, timm): functional calls, tensor methods, in-place ops, shape arithmetic.

Unlike the rest of the zoo (:mod:`cepd_deploy.model.zoo`), these are not rewritten into friendly
module forms: they are what a user brings, so the front end must understand them as they are.
One module per family; :mod:`.common` holds the torchvision building blocks they share.
"""

from __future__ import annotations

from cepd_deploy.model.archs.convnext import convnext_tiny
from cepd_deploy.model.archs.deeplab import deeplabv3
from cepd_deploy.model.archs.densenet import densenet121
from cepd_deploy.model.archs.efficientnet import efficientnet_b0
from cepd_deploy.model.archs.mobilenetv3 import mobilenetv3_small
from cepd_deploy.model.archs.shufflenet import shufflenetv2

__all__ = [
    "convnext_tiny",
    "deeplabv3",
    "densenet121",
    "efficientnet_b0",
    "mobilenetv3_small",
    "shufflenetv2",
]
