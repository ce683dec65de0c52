"""``convert`` on modern structures: channels-last pointwise Linears become CEPD layers, conv
subclasses and 'same' padding are convertible, depthwise/SE/asymmetric convs stay dense and
``inspect`` says why; model files keep all of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy import convert
from cepd_deploy.cli import main
from cepd_deploy.frontend.candidates import REASONS, why_dense
from cepd_deploy.frontend.lower import lower
from cepd_deploy.model.format import load, save
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.plan.reference import run
from tests.conftest import randomize_bn
from tests.test_lower_idioms import StaticSamePadding


class Modern(nn.Module):
    """A stem, a ConvNeXt block (channels-last Linears), an SE block, a 'same' conv, a conv
    subclass with its own symmetric padding and one with one-sided padding."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.fc1, self.fc2 = nn.Conv2d(dim, dim // 4, 1), nn.Conv2d(dim // 4, dim, 1)
        self.same = nn.Conv2d(dim, dim, 3, padding="same")
        self.sub = StaticSamePadding(dim, dim, 5, 1, 8)  # pads 2 on every side
        self.asym = StaticSamePadding(dim, dim, 3, 2, 8)  # pads 0 top/left, 1 bottom/right
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = self.asym(self.sub(F.silu(self.same(x * s))))
        return self.head(x.mean([2, 3]))


def _model():
    torch.manual_seed(0)
    return randomize_bn(Modern()).eval()


def test_modern_structures_convert_and_match_their_plan():
    model = _model()
    shape = (2, 3, 8, 8)
    small = convert(model, flops_remaining=0.5, input_shape=shape)
    cepd = {n for n, m in small.named_modules() if isinstance(m, CEPDConv2d)}
    assert {"pw1", "pw2", "same", "sub"} <= cepd and not cepd & {"stem", "dw", "fc1", "fc2", "asym"}
    assert small.pw1.channels_last and not small.same.channels_last
    x = torch.randn(shape)
    plan = lower(small, shape)
    with torch.no_grad():
        want = small(x)
        for name in ("pw1", "same", "sub"):  # every CEPD layer == its reconstructed dense conv
            layer = small.get_submodule(name)
            inp = torch.randn(2, 8, 8, layer.in_channels) if layer.channels_last else torch.randn(2, 16, 8, 8)
            assert torch.allclose(layer(inp), layer.dense_forward(inp), atol=1e-5)
    assert torch.allclose(run(plan, x), want, atol=1e-5 * want.abs().max().item())
    assert totals_fraction(plan) < 0.52
    why = why_dense(small, plan)
    assert why == {"stem": REASONS["first"], "dw": REASONS["grouped"], "fc1": REASONS["pooled"],
                   "fc2": REASONS["pooled"], "asym": REASONS["asymmetric"]}  # fmt: skip


def totals_fraction(plan) -> float:
    from cepd_deploy.plan.cost import totals

    return totals(plan)["flops_remaining"]


def test_a_config_converts_squeeze_excitation_layers_when_it_names_them():
    model = _model()
    small = convert(model, config={"layers": {"fc*": {"ranks": [2, 2]}}}, input_shape=(1, 3, 8, 8))
    assert isinstance(small.fc1, CEPDConv2d) and isinstance(small.fc2, CEPDConv2d)
    assert isinstance(small.pw1, nn.Linear)


def test_channels_last_layers_survive_a_model_file(tmp_path):
    model = _model()
    small = convert(model, flops_remaining=0.5, input_shape=(1, 3, 8, 8))
    path = tmp_path / "m.pt"
    save(small, path)
    back = load(path, template=Modern())
    assert back.pw1.channels_last and isinstance(back.pw2, CEPDConv2d)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), small(x))


def test_inspect_says_why_convs_stayed_dense(capsys):
    assert main(["inspect", "mobilenetv3_small"]) == 0
    out = capsys.readouterr().out
    assert f"stayed dense, {REASONS['grouped']}:" in out and f"stayed dense, {REASONS['pooled']}:" in out
