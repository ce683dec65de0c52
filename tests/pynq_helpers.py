"""Shared, cached models for the PYNQ-Z1 tests (converting is the slow part)."""

from __future__ import annotations

import importlib.util
import shutil
from functools import cache

import pytest
import torch

from cepd_deploy import build_model, convert
from tests.conftest import randomize_bn

#: a test that C-simulates the engine: it needs g++ and hls4ml's ap_types headers
CSIM = pytest.mark.skipif(
    shutil.which("g++") is None or importlib.util.find_spec("hls4ml") is None,
    reason="the C-simulation needs g++ and hls4ml's ap_types headers",
)


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory):
    """A fresh engine cache per test module that imports this fixture (compiled C-simulations)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CEPD_DEPLOY_CACHE", str(tmp_path_factory.mktemp("cepd-cache")))
    yield
    mp.undo()


@cache
def cepd_resnet20() -> torch.nn.Module:
    """A CEPD ResNet-20 at 50% FLOPs with non-trivial BatchNorm statistics (shared, do not modify)."""
    torch.manual_seed(0)
    return convert(
        randomize_bn(build_model("resnet20")), flops_remaining=0.5, input_shape=(1, 3, 32, 32)
    ).eval()
