"""convert: rank allocation to a target, explicit configs, what stays dense, clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cepd_deploy import build_model, convert, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.plan.cost import totals


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_flops_target_is_hit_within_one_percent(target):
    model = convert(build_model("resnet20"), flops_remaining=target)
    assert totals(lower(model, (1, 3, 32, 32)))["flops_remaining"] == pytest.approx(target, abs=0.01)


def test_params_target_is_hit():
    model = convert(build_model("resnet56"), params_remaining=0.4)
    assert totals(lower(model, (1, 3, 32, 32)))["params_remaining"] == pytest.approx(0.4, abs=0.01)


def test_unreachable_target_names_the_best_reachable():
    with pytest.raises(CEPDError, match=r"best reachable is 0\.\d+"):
        convert(build_model("resnet20"), flops_remaining=0.01)
    with pytest.raises(CEPDError, match="exactly one"):
        convert(build_model("resnet20"))


def test_first_and_grouped_convs_stay_dense():
    model = convert(build_model("mobilenetv2_cifar"), flops_remaining=0.7)
    kinds = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, CEPDConv2d))}
    first = next(iter(kinds))
    assert isinstance(kinds[first], nn.Conv2d)
    for m in kinds.values():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert not isinstance(m, CEPDConv2d)
    assert any(isinstance(m, CEPDConv2d) for m in kinds.values())


def test_explicit_config_shares_ranks_within_a_block(tmp_path):
    cfg = tmp_path / "ranks.yaml"
    cfg.write_text(
        "sparsity: 0.75\n"
        "layers:\n"
        "  'layer2.0.conv*': {ranks: [8, 8]}\n"
        "  'layer3.*.conv2': {ranks: [12, 10], kappa: 5}\n"
    )
    model = convert(build_model("resnet20"), config=cfg)
    got = {n: (m.spec.ranks, m.spec.kappa) for n, m in model.named_modules() if isinstance(m, CEPDConv2d)}
    assert got["layer2.0.conv1"] == got["layer2.0.conv2"] == ((8, 8), 8)  # 32 filters * 0.25
    assert got["layer3.2.conv2"] == ((12, 10), 5)
    assert "layer1.0.conv1" not in got


def test_bad_configs_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: {'nothing.matches': {ranks: [2, 2]}}\n")
    with pytest.raises(CEPDError, match="names no convertible conv"):
        convert(build_model("resnet20"), config=bad)
    bad.write_text("layers: [1, 2\n")
    with pytest.raises(CEPDError, match="not valid YAML"):
        convert(build_model("resnet20"), config=bad)
    with pytest.raises(CEPDError, match="bonds"):
        convert(build_model("resnet20"), config={"layers": {"layer1.0.conv1": {"ranks": [2]}}})


def test_converted_model_approximates_the_original_at_high_ranks():
    torch.manual_seed(0)
    base = build_model("resnet20").eval()
    model = convert(base, flops_remaining=1.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = base(x), model(x)
    assert float((a - b).abs().max() / a.abs().max()) < 0.3


@pytest.mark.slow
def test_resnet50_at_the_papers_points():
    base = build_model("resnet50")
    for f in (0.663, 0.461, 0.371):
        t = totals(lower(convert(base, flops_remaining=f), (1, 3, 224, 224)))
        assert t["flops_remaining"] == pytest.approx(f, abs=0.01)
        assert t["params_remaining"] < 1.0
