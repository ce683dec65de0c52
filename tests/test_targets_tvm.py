"""The TVM Targets through their public verbs (issue 20): what they are, their options, the light
module, build and runner on a CEPD ResNet-20 against the reference interpreter, and the CEPD-layer
fusions the lowering reads from ``plan.blocks()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import cepd_deploy
from cepd_deploy import build_model, lower
from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Role
from cepd_deploy.plan.passes import merge_pointwise
from cepd_deploy.plan.reference import run as reference
from cepd_deploy.targets import get
from cepd_deploy.targets.base import Kind
from cepd_deploy.targets.tvm.target import TVM, TVMCuda

TOL = 1e-4


def rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def cepd_resnet20():
    """ResNet-20 converted to CEPD (half the FLOPs), for one image."""
    torch.manual_seed(0)
    model = cepd_deploy.convert(
        build_model("resnet20").eval(), flops_remaining=0.5, input_shape=(1, 3, 32, 32)
    )
    return lower(model.eval(), (1, 3, 32, 32))


def test_what_the_targets_are():
    tvm, cuda = TVM(), TVMCuda()
    assert (tvm.name, tvm.kind, tvm.passes) == ("tvm", Kind.COMPILER, ("merge_pointwise",))
    assert (cuda.name, cuda.kind, cuda.passes) == ("cuda", Kind.COMPILER, ("merge_pointwise",))
    assert TVM.verbs() == TVMCuda.verbs() == ("build", "runner") and not tvm.can("estimate")
    assert isinstance(get("tvm"), TVM) and get("llvm") is get("tvm") and isinstance(get("cuda"), TVMCuda)
    assert TVM.Options() == TVM.Options(verify=False, tune_trials=0, threads=None, label=None)
    # options from parsed arguments: names it does not have and None values are ignored
    opts = tvm.options({"verify": True, "tune_trials": 3, "threads": None, "bits": 8})
    assert (opts.verify, opts.tune_trials, opts.threads) == (True, 3, None)
    for bad in ({"tune_trials": -1}, {"tune_trials": True}, {"threads": 0}, {"threads": "x"}):
        with pytest.raises(CEPDError):
            TVM.Options(**bad)


def test_the_target_module_is_light_and_sets_no_environment():
    """The registry imports target.py to list targets: no TVM, numpy or torch, no TVM_* variable."""
    code = (
        "import os, sys\n"
        "import cepd_deploy.targets.tvm.target, cepd_deploy.targets.tvm\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tvm', 'numpy', 'torch'))\n"
        "print(heavy, sorted(k for k in os.environ if k.startswith('TVM_')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[] []"


def test_the_runtime_settings_keep_the_users_values(monkeypatch):
    from cepd_deploy.targets.tvm import host

    for name in host.RUNTIME_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TVM_BIND_THREADS", "1")  # the user's choice
    host.configure_runtime()
    assert os.environ["TVM_BIND_THREADS"] == "1"
    assert os.environ["TVM_THREAD_POOL_SPIN_COUNT"] == "10000"
    assert os.environ["TVM_NUM_THREADS"] == str(host.default_threads())


def test_the_lowering_fuses_every_cepd_block(cepd_resnet20):
    """Each block's scatter folds into its chain's last step; its S conv gets the zero row."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install cepd-deploy[tvm])")
    from cepd_deploy.targets.tvm.lowering import Lowering

    plan = merge_pointwise(cepd_resnet20)
    blocks = plan.blocks()
    lw = Lowering(plan)
    assert blocks and len(lw.folded) == len(lw.extended) == len(blocks)
    producer = plan.producer()
    for b in blocks:
        last = producer[b.chain_output]
        assert last.role is Role.STEP and lw.folded[last.name] is b.scatter
        assert lw.extended[b.sparse.name] == b.kappa
    # the 1x1 layers (the shortcut projections): the S branch rides on the first step's GEMM
    by_name, block_of = {n.name: n for n in plan.nodes}, plan.block_of()
    assert lw.joined
    for first, s_node in lw.joined.items():
        b = block_of[first]
        assert s_node is b.sparse and by_name[first].role is Role.STEP
        assert by_name[first].inputs[0] == s_node.inputs[0] == b.branch_input


@pytest.fixture(scope="module")
def built(cepd_resnet20, tmp_path_factory):
    """The build verb (with its verification) into a fresh folder."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install cepd-deploy[tvm])")
    out = tmp_path_factory.mktemp("tvm") / "r20"
    return out, TVM().build(cepd_resnet20, out, TVM.Options(verify=True, threads=1, label="resnet20"))


def test_build_writes_a_verified_library(cepd_resnet20, built):
    from cepd_deploy.targets.tvm import load

    out, b = built
    m = b.figures
    assert b.ok and b.problem == "" and "built resnet20 for llvm" in b.text and "verified" in b.text
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so"]
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["label"] == "resnet20" and m["target"]["kind"] == "llvm" and m["target"]["num-cores"] == 1
    # the verification compares with the Plan's reference interpreter only (the target sees a Plan)
    assert set(m["verify"]["max_rel_err"]) == {"plan"} and m["verify"]["max_rel_err"]["plan"] <= TOL
    assert m["ops"] == len(merge_pointwise(cepd_resnet20)) and m["kernels"] < m["ops"]
    model = load(out, threads=1)
    x = np.random.default_rng(3).standard_normal(cepd_resnet20.input_shape).astype(np.float32)
    assert rel(model(x), reference(cepd_resnet20, x).numpy()) <= TOL


@pytest.mark.slow
def test_runner_runs_the_plan(cepd_resnet20, built, tmp_path):
    run = TVM().runner(cepd_resnet20, threads=1, workdir=tmp_path / "work")
    x = np.random.default_rng(4).standard_normal(cepd_resnet20.input_shape).astype(np.float32)
    y = run(x)
    assert y.shape == (1, 10) and rel(y, reference(cepd_resnet20, x).numpy()) <= TOL
    assert run.manifest["kernels"] == built[1].figures["kernels"]  # the same passes, the same kernels
    (folder,) = (tmp_path / "work").iterdir()
    assert folder.name.startswith("tvm-") and (folder / "manifest.json").is_file()
