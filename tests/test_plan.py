"""The Plan: lowering, contraction-order search, cost, verify, reference interpreter, fusion."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from cepd_deploy import build_model, convert, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.model.layers import CEPDConv2d, run_nodes
from cepd_deploy.plan import reference
from cepd_deploy.plan.contraction import DENSE, enumerate_paths
from cepd_deploy.plan.cost import dense_macs, node_macs, nodes_macs, plan_macs, plan_params, totals
from cepd_deploy.plan.ir import Op
from cepd_deploy.plan.report import summary
from cepd_deploy.plan.ttconv import TTConvSpec, choose_path, lower_ttconv, ttconv_weights
from cepd_deploy.plan.verify import verify
from cepd_deploy.tt import TTLayout
from tests.conftest import randomize_bn


def test_dense_macs_of_standard_networks():
    r50 = lower(build_model("resnet50"), (1, 3, 224, 224))
    assert plan_macs(r50) == pytest.approx(4.09e9, rel=0.01)
    assert dense_macs(r50) == plan_macs(r50)
    r20 = lower(build_model("resnet20"), (1, 3, 32, 32))
    assert plan_macs(r20) == pytest.approx(41e6, rel=0.02)
    # the 666M conv MACs of AlexNet (JSSC 2017) + 58.6M of its three FC layers
    alex = lower(build_model("alexnet"), (1, 3, 227, 227))
    conv = sum(node_macs(n) for n in alex if n.op is Op.CONV)
    assert conv == pytest.approx(666e6, rel=0.01)


def test_cost_of_one_conv_is_exact():
    plan = lower(nn.Sequential(nn.Conv2d(16, 32, 3, padding=1)), (1, 16, 8, 8))
    assert plan_macs(plan) == 32 * 16 * 9 * 64  # 294,912: weights x output positions
    assert plan_params(plan) == 32 * 16 * 9 + 32


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_cifar", "densenet40", "vgg16_cifar"])
def test_reference_interpreter_matches_torch(name, rel_err):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name))
    plan = lower(model, (2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(reference.run(plan, x), model(x)) < 1e-5


def test_cepd_plan_matches_torch_and_epilogues_are_fused(rel_err):
    torch.manual_seed(0)
    model = convert(randomize_bn(build_model("resnet20")), flops_remaining=0.5)
    plan = lower(model, (2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(reference.run(plan, x), model(x)) < 1e-5
    ops = {n.op for n in plan}
    assert Op.RELU not in ops and Op.ADD not in ops  # all fused into epilogues
    assert Op.SCATTER_ADD in ops and Op.MATMUL in ops
    t = totals(plan)
    assert t["flops_remaining"] == pytest.approx(0.5, abs=0.01)


def test_awkward_user_network_converts_and_lowers(awkward, rel_err):
    x = torch.randn(2, 3, 15, 14)
    cepd = convert(awkward, flops_remaining=0.6, input_shape=(1, 3, 15, 14))
    kinds = {n: type(m).__name__ for n, m in cepd.named_modules()}
    assert kinds["stem"] == "Conv2d"  # the first conv stays dense
    assert kinds["grouped"] == "Conv2d"  # grouped convs stay dense
    assert kinds["c"] == "CEPDConv2d"
    plan = lower(cepd, (2, 3, 15, 14))
    with torch.no_grad():
        assert rel_err(reference.run(plan, x), cepd(x)) < 1e-5
    assert totals(plan)["flops_remaining"] == pytest.approx(0.6, abs=0.01)


SPECS = [
    ("o-k-i", 64, 32, (3, 3), (1, 1), (16, 16), 6),
    ("eq9", 16, 16, (3, 3), (2, 2), (9, 20), 2),
    ("oo-k-ii", 24, 18, (3, 3), (1, 1), (4, 6, 6, 3), 0),
    ("o-k-i", 32, 16, (1, 1), (2, 2), (8, 8), 3),
]


@pytest.mark.parametrize("spec_args", SPECS)
def test_contraction_search_is_exhaustive_and_never_worse_than_dense(spec_args):
    layout, o, i, k, stride, ranks, kappa = spec_args
    lay = TTLayout.parse(layout, o, i, k)
    pad = (k[0] // 2, k[1] // 2)
    spec = TTConvSpec(lay, lay.clip_ranks(ranks), kappa, stride, pad, (1, 1))
    shape = (1, i, 16, 16)
    chosen = choose_path(spec, shape, nodes_macs)
    every = {p: nodes_macs(lower_ttconv(spec, "l", "x", shape, p)) for p in (*enumerate_paths(lay), DENSE)}
    assert every[chosen] == min(every.values())
    assert every[chosen] <= every[DENSE]
    # every order of the cores that touches the state is enumerated
    assert len(enumerate_paths(lay)) >= 1
    assert len(enumerate_paths(lay)) <= len(list(itertools.permutations(range(lay.num_cores))))


@pytest.mark.parametrize(
    "layout, o, i, ranks",
    [("eq9", 12, 1, (1, 1)), ("eq9", 12, 2, (2, 2)), ("oo-k-ii", 24, 18, (4, 6, 6, 3)),
     ("o-k-i", 24, 16, (8, 8))],
)  # fmt: skip
def test_every_contraction_path_computes_the_layer(layout, o, i, ranks, rel_err):
    # unequal O factors (12 = 4 x 3) make a wrong final permute visible
    torch.manual_seed(0)
    conv = nn.Conv2d(i, o, 3, padding=1, bias=False)
    layer = CEPDConv2d.from_conv(conv, ranks=ranks, kappa=2, layout=layout)
    index = layer.s_index.tolist()
    x = torch.randn(2, i, 9, 7)
    weights = lambda p: ttconv_weights(layer.spec, "l", p, layer.cores, layer.s_weight, layer.s_index)
    with torch.no_grad():
        ref = layer.dense_forward(x)
        for path in enumerate_paths(layer.spec.layout):
            nodes = lower_ttconv(layer.spec, "l", "x", tuple(x.shape), path, index=index)
            out = run_nodes(nodes, {"x": x}, weights(path))["l.out"]
            assert rel_err(out, ref) < 1e-5, path.describe(layer.spec.layout)


def test_a_target_cost_function_changes_the_choice():
    lay = TTLayout.parse("o-k-i", 64, 64, (3, 3))
    spec = TTConvSpec(lay, (16, 16), 6, (1, 1), (1, 1), (1, 1))
    assert choose_path(spec, (1, 64, 8, 8), nodes_macs) != DENSE
    assert choose_path(spec, (1, 64, 8, 8), lambda nodes: len(nodes)) == DENSE  # fewest ops


def test_layer_with_no_useful_rank_runs_dense():
    # at full ranks every TT order costs more than the dense conv: the Plan rebuilds W
    lay = TTLayout.parse("o-k-i", 16, 16, (3, 3))
    spec = TTConvSpec(lay, lay.max_ranks, 0, (1, 1), (1, 1), (1, 1))
    assert choose_path(spec, (1, 16, 8, 8), nodes_macs) == DENSE


def test_verify_rejects_broken_plans():
    plan = lower(build_model("resnet20"), (1, 3, 32, 32))
    verify(plan)
    bad = replace(plan, nodes=[replace(plan.nodes[0], inputs=("nope",))] + plan.nodes[1:])
    with pytest.raises(CEPDError, match="used before"):
        verify(bad)
    consts = dict(plan.consts)
    w = plan.nodes[1].weights[0]
    consts[w] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(CEPDError, match="weight shape"):
        verify(replace(plan, consts=consts))


def test_unsupported_layers_are_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    with pytest.raises(CEPDError, match=r"unsupported operation GroupNorm \(module '1'\)"):
        lower(model, (1, 3, 8, 8))

    class Dynamic(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(CEPDError, match="trace"):
        lower(Dynamic(), (1, 3, 8, 8))
    with pytest.raises(CEPDError, match="input shape"):
        lower(build_model("resnet20"), (1, 3, 32))


def test_plan_summary_lists_every_layer():
    model = convert(build_model("resnet20"), flops_remaining=0.5)
    text = summary(lower(model, (1, 3, 32, 32)))
    assert "layer1.0.conv1" in text and "o-k-i" in text and "FLOPs remaining" in text


def test_cepd_layer_forward_uses_the_plan_ops():
    layer = CEPDConv2d.from_conv(nn.Conv2d(16, 32, 3, padding=1), ranks=(4, 4), kappa=3)
    plan = lower(nn.Sequential(layer), (1, 16, 8, 8))
    assert [n.op for n in plan] == [Op.MATMUL, Op.CONV, Op.MATMUL, Op.CONV, Op.SCATTER_ADD]
    assert plan.layers["0"].path == "i1>k>o1"
