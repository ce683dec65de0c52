"""The front end: every spelling of an operation that public model code uses lowers to the same
Plan ops, computes what torch computes, and what it cannot lower is a one-line error that names
the operation, the module and the source line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.lower import lower
from cepd_deploy.plan.ir import Op
from cepd_deploy.plan.reference import run
from tests.conftest import randomize_bn


def _check(model: nn.Module, shape=(2, 8, 8, 8), tol: float = 1e-5):
    torch.manual_seed(0)
    model = randomize_bn(model).eval()
    x = torch.randn(shape)
    plan = lower(model, shape)
    with torch.no_grad():
        want = model(x)
    got = run(plan, x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= tol * want.abs().max().clamp_min(1e-6)
    return plan


def _ops(plan) -> list[str]:
    return [n.op.value for n in plan.nodes]


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        a = F.max_pool2d(self.conv(x), 2)
        b = F.avg_pool2d(x, kernel_size=2, stride=2)
        c = F.adaptive_avg_pool2d(a + b, 1)
        d = F.adaptive_avg_pool2d(a, (2, 2))
        e = F.adaptive_max_pool2d(b, 1)
        return torch.cat([c.flatten(1), d.view(d.size(0), -1), e.reshape(e.shape[0], -1), a.mean([2, 3]),
                          b.mean((-2, -1), keepdim=True).squeeze(-1).squeeze(-1)], dim=1)  # fmt: skip


def test_pooling_as_functions_and_tensor_methods():
    plan = _check(Pools())
    ops = _ops(plan)
    assert ops.count("global_avgpool") == 3 and "maxpool" in ops and "avgpool" in ops


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        mods = [nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.Sigmoid(), nn.GELU(), nn.LeakyReLU(0.2),
                nn.PReLU(8), nn.Tanh(), nn.ReLU6(), nn.Hardtanh(0, 6)]  # fmt: skip
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        ys = [m(x) for m in self.mods]
        ys += [F.silu(x), F.hardswish(x), torch.sigmoid(x), x.sigmoid(), F.gelu(x), x.tanh(),
               torch.tanh(x), F.leaky_relu(x, 0.1), F.relu(x, inplace=False), x.relu(), F.relu6(x),
               x * torch.sigmoid(x)]  # fmt: skip
        return torch.cat(ys, 1)


def test_activations_every_spelling():
    plan = _check(Activations(), (1, 8, 5, 5))
    kinds = {n.attrs.kind for n in plan.nodes if n.op is Op.ACT}
    assert kinds == {"silu", "hardswish", "hardsigmoid", "sigmoid", "gelu", "leaky_relu", "prelu", "tanh"}


class SqueezeExcite(nn.Module):
    """torchvision's SqueezeExcitation and layer scale with a parameter used in forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        y = s * x
        y = self.gamma * y + 1.0
        return (y - x) / 2 - 0.5 * x


def test_broadcast_multiply_and_constants():
    ops = _ops(_check(SqueezeExcite()))
    assert "mul" in ops and "affine" in ops


class Shuffle(nn.Module):
    """ShuffleNetV2's split, channel shuffle and indexing."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), dim=1)
        batchsize, num_channels, height, width = out.size()
        out = out.view(batchsize, 2, num_channels // 2, height, width)
        out = torch.transpose(out, 1, 2).contiguous()
        out = out.view(batchsize, -1, height, width)
        a, b = torch.split(out, [3, 5], dim=1)
        return torch.cat([b, a[:, 1:], out[:, :2, ...]], 1)


def test_chunk_split_shuffle_and_slices():
    plan = _check(Shuffle())
    ops = _ops(plan)
    assert ops.count("permute") == 1 and ops.count("slice") >= 4


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        self.same = nn.Conv2d(8, 8, 3, padding="same", dilation=2)
        self.even = nn.Conv2d(8, 8, 4, padding="same")
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.strided = nn.Conv2d(8, 8, 3, stride=2)

    def forward(self, x):
        y = self.even(self.same(x))
        return self.strided(self.pad(y)) + self.strided(F.pad(y, (1, 1, 1, 1)))[:, :, :4, :4] * 0 + 1


class StaticSamePadding(nn.Conv2d):
    """efficientnet_pytorch's Conv2dStaticSamePadding: a ZeroPad2d, then F.conv2d on its weight."""

    def __init__(self, cin, cout, k, stride, image_size):
        super().__init__(cin, cout, k, stride=stride)
        pad = max((image_size + stride - 1) // stride * stride - stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_same_padding_and_pads_fold_into_convs():
    with pytest.raises(CEPDError, match="indexing"):
        lower(Padded(), (1, 8, 8, 8))
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding="same", dilation=2), nn.Conv2d(8, 8, 4, padding="same"),
                        nn.ZeroPad2d((1, 1, 2, 2)), nn.Conv2d(8, 8, 3), StaticSamePadding(8, 8, 3, 2, 8),
                        StaticSamePadding(8, 8, 5, 1, 4))  # fmt: skip
    plan = _check(net)
    convs = [n for n in plan.nodes if n.op is Op.CONV]
    assert len(convs) == 5  # every conv, subclasses too, is one CONV
    assert [c.attrs.padding for c in convs] == [(2, 2), (1, 1), (2, 1), (0, 0), (2, 2)]
    pads = [n.attrs.pads for n in plan.nodes if n.op is Op.PAD]
    assert pads == [(0, 1, 0, 1), (0, 1, 0, 1)]  # the even "same" kernel, the static same stride-2 pad


class ChannelsLast(nn.Module):
    """ConvNeXt's block: depthwise conv, channels-last LayerNorm + Linear + GELU, layer scale."""

    def __init__(self, dim=8):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)
        self.stem_norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), (8,), self.stem_norm.weight, self.stem_norm.bias, 1e-6)
        x = x.permute(0, 3, 1, 2)
        inp = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = inp + x.permute(0, 3, 1, 2)
        return x.mean([-2, -1])


def test_channels_last_layernorm_linear_and_layer_scale():
    plan = _check(ChannelsLast(), (2, 8, 9, 9), tol=2e-5)
    ops = _ops(plan)
    assert ops.count("layernorm") == 2 and ops.count("matmul") == 2 and "permute" not in ops


class Segmentation(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.bi = nn.UpsamplingBilinear2d(scale_factor=2)

    def forward(self, x):
        size = x.shape[-2:]
        p = F.interpolate(self.pool(x), size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        return torch.cat([p, self.up(y), self.bi(y)[:, :, :8, :8] * 0 + x], 1)


def test_interpolate_and_upsample():
    with pytest.raises(CEPDError, match=r"indexing .* in the model's forward at test_lower_idioms.py:\d+"):
        lower(Segmentation(), (1, 8, 8, 8))

    class Seg(Segmentation):
        def forward(self, x):
            size = x.shape[-2:]
            p = F.interpolate(self.pool(x), size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
            return torch.cat([p, self.up(y), self.bi(y), F.interpolate(y, size=(5, 7))], 1)[:, :, :1] * 0 + p

    with pytest.raises(CEPDError, match="does not accept input shape .* Sizes of tensors must match"):
        lower(Seg(), (1, 8, 8, 8))

    class Seg2(Segmentation):
        def forward(self, x):
            p = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
            y = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
            z = F.interpolate(y, size=(5, 7))
            return (
                p
                + self.up(y)
                + self.bi(y)
                + F.interpolate(z, size=(8, 8), mode="bilinear", align_corners=True)
            )

    plan = _check(Seg2())
    assert _ops(plan).count("resize") == 6


class ResNetIdioms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out += identity
        out = self.relu(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


class InPlace(nn.Module):
    """In-place ops change the tensor every later reader sees, as in torch."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = x * 2
        z = F.relu(y, inplace=True)
        a = y + z  # y was overwritten: a == 2 * relu(2x)
        self.relu(a)
        b = a.sigmoid_()
        return a + b + y


def test_in_place_ops_are_seen_by_later_readers():
    _check(InPlace())


def test_in_place_add_and_reused_relu():
    plan = _check(ResNetIdioms())
    assert _ops(plan) == ["conv", "add", "global_avgpool", "flatten", "linear"]
    assert plan.nodes[0].epilogue.act == plan.nodes[1].epilogue.act == "relu"


class Bad(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1), Inner())

    def forward(self, x):
        return self.block(x)


class Inner(nn.Module):
    def forward(self, x):
        return torch.softmax(x, 1)


def test_unsupported_constructs_name_the_operation_module_and_line():
    with pytest.raises(CEPDError) as err:
        lower(Bad(), (1, 8, 4, 4))
    msg = str(err.value)
    assert "\n" not in msg
    assert (
        "softmax" in msg and "'block.1'" in msg and "test_lower_idioms.py:" in msg and "torch.softmax" in msg
    )

    class Gn(nn.Module):
        def __init__(self):
            super().__init__()
            self.gn = nn.GroupNorm(2, 8)

        def forward(self, x):
            return self.gn(x)

    with pytest.raises(CEPDError, match=r"unsupported operation GroupNorm \(module 'gn'\)"):
        lower(Gn(), (1, 8, 4, 4))

    class Reflect(nn.Module):
        def forward(self, x):
            return F.pad(x, (1, 1, 1, 1), mode="reflect")

    with pytest.raises(CEPDError, match="reflect"):
        lower(Reflect(), (1, 8, 4, 4))
