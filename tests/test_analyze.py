"""The analyses: operational sequence (6a), formats (6b), ADMM vs direct (6c), and their CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cepd_deploy.cli import main
from cepd_deploy.compress.analysis import admm_vs_direct, formats, sequence
from cepd_deploy.compress.approx import format_approx, sequences, svd_approx
from cepd_deploy.compress.pipeline import CompressConfig
from cepd_deploy.tt import TTLayout, tt_full


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.a = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.b = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.c = nn.Conv2d(16, 32, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(torch.flatten(self.pool(torch.relu(self.c(x))), 1))


SHAPE = (1, 3, 16, 16)


def _low_rank(lay: TTLayout, ranks, gen) -> torch.Tensor:
    r = (1, *ranks, 1)
    cores = [torch.randn(r[j], n, r[j + 1], generator=gen, dtype=torch.float64)
             for j, n in enumerate(lay.core_sizes)]  # fmt: skip
    return lay.from_cores_tensor(tt_full(cores))


def test_sequences_tell_the_orders_apart():
    """W = L0 + S0, S0 two huge filters: L(S) removes them first and is exact, S(L) is not;
    L+S (ADMM on the weight error) gets close to exact as well."""
    g = torch.Generator().manual_seed(0)
    lay = TTLayout.parse("o-k-i", 16, 8, (3, 3))
    ranks, kappa = (3, 3), 2
    w = _low_rank(lay, ranks, g)
    w[[4, 11]] += 20 * torch.randn(2, 8, 3, 3, generator=g, dtype=torch.float64)
    got = sequences([w], [lay], [ranks], [kappa], iters=100)
    err = {k: float((v[0] - w).pow(2).mean() / w.pow(2).mean()) for k, v in got.items()}
    assert err["L(S)"] < 1e-20
    assert err["S(L)"] > 1e-3
    assert err["L+S"] < 1e-2 * err["S(L)"]


def test_sequence_rows_share_the_compression(tmp_path):
    torch.manual_seed(0)
    res = sequence(Small(), SHAPE, ratio=3.0, sparsity=0.9, iters=10)
    assert [r["name"] for r in res["layers"]] == ["a", "b", "c"]  # the stem stays out
    for r in res["layers"]:
        assert r["ratio"] >= 3.0 and r["kappa"] == round(r["shape"][0] * 0.1)
        assert all(r[k] > 0 for k in ("L+S", "S(L)", "L(S)"))
        assert r["best"] == min(("L+S", "S(L)", "L(S)"), key=lambda k: r[k])
    assert sum(res["wins"].values()) == 3
    # at sparsity 0.75 the 1x1 conv's S alone (8 of 32 filters) leaves no room for any L
    assert sequence(Small(), SHAPE, ratio=3.0, sparsity=0.75, iters=1)["skipped"] == ["c"]


def test_svd_at_a_budget_is_the_eckart_young_optimum():
    torch.manual_seed(1)
    w = torch.randn(12, 6, 3, 3)
    approx, params = svd_approx(w, budget=3 * (12 + 54))
    assert params == 3 * 66
    s = torch.linalg.svdvals(w.double().reshape(12, -1))
    best = math.sqrt(float((s[3:] ** 2).sum()))
    assert float(torch.linalg.vector_norm((w - approx).double())) == pytest.approx(best, rel=1e-5)


def test_formats_respect_the_budget_and_tighten_with_more_params():
    torch.manual_seed(2)
    w = torch.randn(32, 16, 3, 3)
    loose, tight = format_approx(w, 2.0), format_approx(w, 4.0)
    for method in ("SVD", "Tucker", "TT"):
        assert loose[method][1] <= w.numel() / 2 and tight[method][1] <= w.numel() / 4
    for method in ("SVD", "TT"):  # nested truncations: more rank, less error
        assert (w - loose[method][0]).norm() < (w - tight[method][0]).norm()


def test_formats_rows_and_feature_errors():
    torch.manual_seed(3)
    model = Small().eval()
    res = formats(model, SHAPE, torch.randn(4, 3, 16, 16), ratios=(2.0, 3.0))
    names = {r["name"] for r in res["layers"]}
    assert names == {"a", "b", "c"}
    for r in res["layers"]:
        assert r["achieved_ratio"] >= r["ratio"] - 1e-9
        assert 0 <= r["weight_error"] < 1.0 and 0 <= r["feature_error"] < 1.5
    assert set(res["mean"]["2.0"]) == {"SVD", "Tucker", "TT"}


@pytest.mark.slow
def test_admm_vs_direct_tiny(tmp_path):
    base = CompressConfig(output="", arch=None, params_remaining=0.5, sparsity=0.75, epochs_baseline=1,
                          epochs_admm=1, epochs_finetune=1, batch_size=32, train_limit=64,
                          test_limit=40)  # fmt: skip
    res = admm_vs_direct(base, [0.5], metric="params", out_dir=str(tmp_path), progress=False,
                         model_fn=Small)  # fmt: skip
    (row,) = res["rows"]
    for key in ("direct", "ADMM", "direct_before_ft", "ADMM_before_ft", "baseline_accuracy"):
        assert 0 <= row[key] <= 100
    assert row["params_remaining"] <= 0.51
    assert {p.name for p in tmp_path.glob("*.pt")} == {"baseline.pt", "direct-0.5.pt", "admm-0.5.pt"}


# -- CLI -------------------------------------------------------------------------------------
def test_cli_sequence_json(tmp_path, capsys):
    png = tmp_path / "seq.png"
    assert main(["analyze", "sequence", "resnet20", "--ratio", "3.0", "--iters", "2", "--json",
                 "--png", str(png)]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert len(res["layers"]) == 20
    assert all({"name", "L+S", "S(L)", "L(S)"} <= set(r) for r in res["layers"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_sequence_table(tmp_path, capsys):
    assert main(["analyze", "sequence", "resnet20", "--iters", "1", "--png", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "layer3.2.conv2" in out and "lowest MSE (20 layers)" in out


@pytest.mark.slow
def test_cli_format(tmp_path, capsys):
    png = tmp_path / "fmt.png"
    assert main(["analyze", "format", "resnet20", "--ratios", "3", "--samples", "4", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "compression ratio 3" in out and "fmap TT" in out and png.is_file()


def test_cli_errors(tmp_path, capsys):
    assert main(["analyze", "sequence", "nonexistent.pt", "--png", str(tmp_path / "x.png")]) == 2
    assert main(["analyze", "sequence", "resnet20", "--ratio", "0.5", "--png", str(tmp_path / "x.png")]) == 2
    assert main(["analyze", "format", "resnet20", "--png", str(tmp_path / "no" / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("cepd-deploy: error:") for line in err)
