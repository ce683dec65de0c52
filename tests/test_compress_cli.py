"""``cepd-deploy compress``: JSON figures, files written, one-line errors."""

from __future__ import annotations

import json

import pytest

from cepd_deploy import load, lower
from cepd_deploy.cli import main
from cepd_deploy.plan.cost import totals

QUICK = ["--epochs-baseline", "1", "--epochs-admm", "1", "--epochs-finetune", "1", "--train-limit", "32",
         "--test-limit", "32", "--batch-size", "16", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_compress_json(tmp_path, capsys):
    out = tmp_path / "r20.pt"
    code = main(["compress", "--arch", "resnet20", "--data", "digits", "--flops-remaining", "0.5",
                 "--baseline-out", str(tmp_path / "base.pt"), "-o", str(out), "--json", *QUICK])  # fmt: skip
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("baseline_accuracy", "accuracy", "flops_remaining", "params_remaining"):
        assert key in res
    assert 0 <= res["accuracy"] <= 100 and 0 <= res["baseline_accuracy"] <= 100
    model = load(out)
    t = totals(lower(model, (1, 3, 32, 32)))
    assert res["flops_remaining"] == pytest.approx(t["flops_remaining"])
    assert res["params_remaining"] == pytest.approx(t["params_remaining"])
    assert 0.48 <= res["flops_remaining"] <= 0.5
    assert model.cepd_arch["name"] == "resnet20"
    assert out.with_suffix(".log.jsonl").is_file()
    assert not list(tmp_path.glob("*.png"))  # no plot without --plot
    assert load(tmp_path / "base.pt").cepd_arch["name"] == "resnet20"


@pytest.mark.parametrize("args,match", [
    (["--data", "cifar10:/does/not/exist"], "not a CIFAR-10 python folder"),
    (["--data", "svhn"], "unknown --data"),
    (["--arch", "resnet50"], "resnet50 takes (3, 224, 224) inputs"),
    (["--arch", "nope"], "unknown model"),
    (["--weights", "/no/such/file.pt"], "model file not found"),
    (["--epochs-admm", "-2"], "epochs-admm must be >= 0"),
])  # fmt: skip
def test_compress_errors(tmp_path, capsys, args, match):
    code = main(["compress", "--flops-remaining", "0.5", "-o", str(tmp_path / "m.pt"), *QUICK, *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
    assert not (tmp_path / "m.pt").exists()


def test_compress_output_folder_missing(tmp_path, capsys):
    assert main(["compress", "--flops-remaining", "0.5", "-o", str(tmp_path / "no" / "m.pt")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err


def test_compress_with_latency_aware_allocation(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CEPD_DEPLOY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r20.pt"
    code = main(["compress", "--arch", "resnet20", "--data", "digits", "--flops-remaining", "0.7",
                 "--allocation", "ort-latency", "-o", str(out), "--json", *QUICK])  # fmt: skip
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["flops_remaining"] == pytest.approx(0.7, abs=0.01)
    assert list((tmp_path / "cache").glob("onnx-latency-*.json"))
