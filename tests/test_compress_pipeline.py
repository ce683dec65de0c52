"""The compress pipeline on a tiny network: outputs, checkpoint/resume bit-exactness, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from compress_helpers import Tiny

from cepd_deploy.compress.pipeline import CompressConfig, compress, side_paths
from cepd_deploy.errors import CEPDError
from cepd_deploy.model.layers import CEPDConv2d


def tiny() -> Tiny:
    """The pipeline tests' network: a strided stem, no bias on the last conv."""
    return Tiny(stem_stride=2, last_bias=False)


def _cfg(tmp_path, name="m.pt", **kw) -> CompressConfig:
    base = dict(output=str(tmp_path / name), arch=None, params_remaining=0.5, sparsity=0.75,
                epochs_baseline=2, epochs_admm=2, epochs_finetune=2, batch_size=32, train_limit=96,
                test_limit=60, lr_baseline=0.05, project_every=2)  # fmt: skip
    base.update(kw)
    return CompressConfig(**base)


def _run(cfg, **kw):
    return compress(cfg, model_fn=tiny, progress=False, **kw)


def _state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the tests below."""
    folder = tmp_path_factory.mktemp("ref")
    cfg = _cfg(folder, "ref.pt", baseline_out=str(folder / "base.pt"), plot=str(folder / "curves.png"))
    return cfg, _run(cfg)


@pytest.mark.slow
def test_run_writes_model_log_plot_and_figures(reference):
    cfg, res = reference
    tmp_path = side_paths(cfg.output)["log"].parent
    paths = side_paths(cfg.output)
    assert (tmp_path / "ref.pt").is_file() and (tmp_path / "base.pt").is_file()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # asked for
    assert not paths["checkpoint"].exists()  # removed once the output is complete
    records = [json.loads(line) for line in paths["log"].read_text().splitlines()]
    epochs = [(r["phase"], r["epoch"]) for r in records if "phase" in r and "epoch" in r]
    assert epochs == [(p, e) for p in ("baseline", "admm", "finetune") for e in range(2)]
    admm = [r for r in records if r.get("phase") == "admm" and "epoch" in r]
    assert all(r["res_L"] >= 0 and r["res_S"] >= 0 and r["lambda"] > 0 for r in admm)
    for key in ("baseline_accuracy", "accuracy", "admm_accuracy", "direct_accuracy"):
        assert 0.0 <= res[key] <= 100.0
    assert res["params_remaining"] <= 0.5 + 0.01 and 0 < res["flops_remaining"] < 1
    # the saved file is a CEPD model whose convs 2 and 3 are CEPD layers (the first stays dense)
    from cepd_deploy.model.format import load

    model = load(cfg.output, template=tiny())
    assert [n for n, m in model.named_modules() if isinstance(m, CEPDConv2d)] == ["conv2", "conv3"]


class Interrupt(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("phase,epoch", [("baseline", 0), ("admm", 1), ("finetune", 0)])
def test_resume_is_bit_exact(tmp_path, reference, phase, epoch):
    """Kill the run after one epoch (after its checkpoint), resume: same weights as a run that
    was never interrupted. ("admm", 1) is the last ADMM epoch: the resume starts at a phase
    boundary."""
    ref = reference[0]

    def kill(p, e):
        if (p, e) == (phase, epoch):
            raise Interrupt

    cut = dataclasses.replace(ref, output=str(tmp_path / "cut.pt"))
    with pytest.raises(Interrupt):
        _run(cut, on_epoch_end=kill)
    assert not (tmp_path / "cut.pt").exists()  # nothing that looks complete
    assert side_paths(cut.output)["checkpoint"].is_file()
    _run(dataclasses.replace(cut, resume=True))
    want, got = _state(ref.output), _state(cut.output)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    log = [json.loads(x) for x in side_paths(cut.output)["log"].read_text().splitlines()]
    ref_log = [json.loads(x) for x in side_paths(ref.output)["log"].read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time_s", "wall_s", "train_s")} for r in rs]
    assert strip(log) == strip(ref_log)  # the log holds each epoch once, as if never interrupted


def test_resume_refuses_other_settings(tmp_path):
    cfg = _cfg(tmp_path, epochs_baseline=1, epochs_admm=0, epochs_finetune=0)

    def stop(p, e):
        raise Interrupt

    with pytest.raises(Interrupt):
        _run(cfg, on_epoch_end=stop)
    with pytest.raises(CEPDError, match="seed=0, this run has 1"):
        _run(dataclasses.replace(cfg, seed=1, resume=True))


@pytest.mark.parametrize("kw,match", [
    (dict(params_remaining=None), "exactly one"),
    (dict(flops_remaining=0.5), "exactly one"),
    (dict(epochs_admm=-1), "epochs-admm"),
    (dict(lr_finetune=0.0), "lr-finetune"),
    (dict(data="cifar10:/nonexistent"), "CIFAR-10"),
])  # fmt: skip
def test_config_errors(tmp_path, kw, match):
    with pytest.raises(CEPDError, match=match):
        _run(_cfg(tmp_path, **kw))


def test_weights_must_be_dense(tmp_path):
    from cepd_deploy import convert, save

    torch.manual_seed(0)
    save(convert(tiny(), params_remaining=0.5, sparsity=0.75, input_shape=(1, 3, 32, 32)), tmp_path / "c.pt",
         input_shape=(3, 32, 32))  # fmt: skip
    with pytest.raises(CEPDError, match="dense model file"):
        _run(_cfg(tmp_path, weights=str(tmp_path / "c.pt")))
