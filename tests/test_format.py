"""The model file: bit-exact round trip, templates for user networks, refusal of bad files."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

from cepd_deploy import build_model, convert, load, save
from cepd_deploy.errors import CEPDError
from cepd_deploy.model.format import read
from tests.conftest import AwkwardNet


@pytest.fixture(scope="module")
def r20():
    torch.manual_seed(0)
    return convert(build_model("resnet20"), flops_remaining=0.5).eval()


def test_round_trip_is_bit_exact(r20, tmp_path):
    path = save(r20, tmp_path / "m.pt")
    again = load(path)
    a, b = r20.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(r20(x), again(x))
    assert torch.load(path, weights_only=True)["format"] == "cepd-model"  # safe to load


def test_user_network_needs_its_template(awkward, tmp_path):
    cepd = convert(awkward, flops_remaining=0.6, input_shape=(1, 3, 15, 14))
    path = save(cepd, tmp_path / "u.pt", input_shape=(3, 15, 14))
    with pytest.raises(CEPDError, match="template"):
        load(path)
    again = load(path, template=AwkwardNet())
    x = torch.randn(1, 3, 15, 14)
    with torch.no_grad():
        assert torch.equal(cepd(x), again(x))


def _edit(path: Path, out: Path, change) -> Path:
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(data, out)
    return out


def test_hostile_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": "cepd-model", "payload": Evil()}, bad)
    with pytest.raises(CEPDError, match="refused"):
        load(bad)
    assert not marker.exists()


def test_corrupt_files_are_refused(r20, tmp_path):
    good = save(r20, tmp_path / "m.pt")
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"not a model at all")
    cases = {
        truncated: "truncated or corrupt",
        garbage: "not a CEPD model file",
        tmp_path / "missing.pt": "not found",
        _edit(good, tmp_path / "v.pt", lambda d: d.update(version=99)): "unknown CEPD model file version",
        _edit(good, tmp_path / "f.pt", lambda d: d.update(format="other")): "format tag",
        _edit(good, tmp_path / "s.pt", lambda d: d["state_dict"].pop("fc.weight")): "'fc.weight' missing",
        _edit(good, tmp_path / "x.pt", lambda d: d["state_dict"].update(extra=torch.zeros(1))): "unexpected",
        _edit(good, tmp_path / "r.pt",
              lambda d: d["layers"]["layer1.0.conv1"].update(ranks=[99, 99])): "has shape",
        _edit(good, tmp_path / "m2.pt",
              lambda d: d["layers"]["layer1.0.conv1"].pop("kappa")): "lacks a valid 'kappa'",
        _edit(good, tmp_path / "n.pt",
              lambda d: d["layers"].update({"no.such": d["layers"]["layer1.0.conv1"]})): "does not exist",
    }  # fmt: skip
    for path, message in cases.items():
        with pytest.raises(CEPDError, match=message):
            load(path)
    assert zipfile.is_zipfile(good)


def test_save_is_atomic(r20, tmp_path):
    target = tmp_path / "m.pt"

    class Boom(Exception):
        pass

    def broken(*_):
        raise Boom

    import cepd_deploy.model.format as fmt

    orig = fmt.torch.save
    fmt.torch.save = broken
    try:
        with pytest.raises(Boom):
            save(r20, target)
    finally:
        fmt.torch.save = orig
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left
    assert read(save(r20, target))["version"] == 1
