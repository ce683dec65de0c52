"""ResNet-50 CEPD (ImageNet shapes) through both ONNX exports: one slow test."""

from __future__ import annotations

import pytest
import torch

import cepd_deploy as cd
from cepd_deploy.targets.onnx import to_model
from cepd_deploy.targets.onnx.fused import OP_TYPE
from cepd_deploy.targets.onnx.verify import compare


@pytest.mark.slow
def test_resnet50_portable_and_fused_match_torch():
    torch.manual_seed(0)
    # explicit ranks (a FLOPs target takes ~2 min to allocate on 2 cores)
    model = cd.convert(cd.build_model("resnet50"), config={"layers": {"*": {"ranks": [24, 24]}}})
    plan = cd.lower(model, (1, 3, 224, 224))
    for fused in (False, True):
        onnx_model = to_model(plan, fused=fused)
        checks = compare(plan, onnx_model, model, samples=1)
        assert all(c.ok for c in checks), [c for c in checks if not c.ok][:3]
        assert len(checks) > 50
        n_fused = sum(n.op_type == OP_TYPE for n in onnx_model.graph.node)
        assert n_fused == (52 if fused else 0)
