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


NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv3(x))), 1))
"""


@pytest.fixture
def custom(tmp_path, monkeypatch):
    """A CEPD model file made from a network named ``netmod.py:Net`` (width 12), in the current
    directory."""
    from cepd_deploy.model import reference

    monkeypatch.chdir(tmp_path)
    (tmp_path / "netmod.py").write_text(NET)
    torch.manual_seed(0)
    cepd = convert(reference.build("netmod.py:Net", {"width": 12}), flops_remaining=0.5,
                   input_shape=(1, 3, 16, 16)).eval()  # fmt: skip
    return cepd, save(cepd, tmp_path / "c.pt", input_shape=(3, 16, 16))


def test_network_reference_round_trip(custom):
    from cepd_deploy.model.format import dense_architecture
    from cepd_deploy.model.layers import CEPDConv2d
    from cepd_deploy.model.reference import Reference

    cepd, path = custom
    data = torch.load(path, weights_only=True)
    assert data["network"] == {"ref": "netmod.py:Net", "kwargs": {"width": 12}} and data["arch"] is None
    with pytest.raises(CEPDError, match="records the network 'netmod.py:Net'.*--trust-model-code"):
        load(path)  # a file's reference is not imported unless the user says so
    x = torch.randn(2, 3, 16, 16)
    for again in (load(path, trust_code=True), load(path, template=Reference("netmod.py:Net"))):
        assert {n for n, m in again.named_modules() if isinstance(m, CEPDConv2d)} == set(data["layers"])
        a, b = cepd.state_dict(), again.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with torch.no_grad():  # a CEPD layer's first call differs by an ulp from later (cached) ones
            cepd(x), again(x)
            assert torch.equal(cepd(x), again(x))
        assert again.cepd_network == {"ref": "netmod.py:Net", "kwargs": {"width": 12}}
    dense = dense_architecture(again)
    assert all(type(dense.get_submodule(n)) is torch.nn.Conv2d for n in data["layers"])
    assert dense.conv2.in_channels == 12
    with pytest.raises(CEPDError, match="contradicts the architecture"):  # not the arguments it was made with
        load(path, template=Reference("netmod.py:Net", {"width": 8}))


def _touch_pickle(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, path)
    return path


def test_hostile_network_references_run_nothing(custom, tmp_path):
    """A model file is data: its recorded reference is never imported without consent, and even
    with it a reference cannot reach the standard library, torch's loaders or Python internals."""
    _, path = custom
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = None\n")
    bomb = _touch_pickle(tmp_path / "bomb.pt", marker)

    def net(ref, kwargs=None):
        return lambda d: d.update(network={"ref": ref, "kwargs": kwargs or {}})

    trusted = {  # refused even with trust_code=True, before anything is called
        "os:system": ({"command": f"touch {marker}"}, "standard library"),
        "subprocess:run": ({"args": ["touch", str(marker)]}, "standard library"),
        "builtins:exec": ({"source": f"open({str(marker)!r}, 'w')"}, "standard library"),
        "pickle:loads": ({"data": "x"}, "standard library"),
        "torch:load": ({"f": str(bomb), "weights_only": False}, "only nn.Module classes"),
        "torch.hub:load": ({"repo_or_dir": str(tmp_path), "model": "x", "source": "local"}, "only nn.Module"),
        "torch:Tensor": ({}, "not an nn.Module subclass"),
    }
    for i, (ref, (kwargs, message)) in enumerate(trusted.items()):
        bad = _edit(path, tmp_path / f"t{i}.pt", net(ref, kwargs))
        with pytest.raises(CEPDError, match="--trust-model-code"):
            load(bad)
        with pytest.raises(CEPDError, match=message):
            load(bad, trust_code=True)
    bad = _edit(path, tmp_path / "e.pt", net("evil.py:Net"))
    with pytest.raises(CEPDError, match="evil.py:Net"):
        load(bad)  # the file beside it is not run without consent
    assert not marker.exists()

    malformed = {  # refused when the file is read: nothing imported, trusted or not
        "dunder": (net("netmod.py:Net.__init__.__globals__"), "is a Python internal"),
        "not a reference": (net("rm -rf /"), "bad network reference"),
        "long": (net("m" * 1000 + ":Net"), "bad network reference"),
        "kwargs list": (lambda d: d.update(network={"ref": "netmod.py:Net", "kwargs": [1]}), "JSON object"),
        "kwargs key": (net("netmod.py:Net", {"a b": 1}), "not a keyword argument name"),
        "kwargs object": (net("netmod.py:Net", {"width": {1: 2}}), "not plain JSON data"),
        "extra key": (lambda d: d.update(network={"ref": "netmod.py:Net", "kwargs": {}, "code": "x"}),
                      "field 'network' malformed"),
        "both": (lambda d: d.update(arch={"name": "resnet20", "kwargs": {}}), "both a zoo architecture"),
    }  # fmt: skip
    for i, (change, message) in enumerate(malformed.values()):
        bad = _edit(path, tmp_path / f"m{i}.pt", change)
        with pytest.raises(CEPDError, match=message):
            read(bad)
        with pytest.raises(CEPDError, match=message):
            load(bad, trust_code=True)
    assert not marker.exists()
