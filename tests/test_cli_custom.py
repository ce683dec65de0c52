"""Your own network from the command line: ``MODULE:ATTR`` references (a ``.py`` file or a dotted
module, a class or a factory, ``--model-args``) through every command, model files that record
the reference, and one-line errors for every way a reference can go wrong."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from cepd_deploy.cli import main
from cepd_deploy.model import reference
from cepd_deploy.model.format import load, save
from cepd_deploy.model.layers import CEPDConv2d

BLOCKS = '''
from torch import nn


class Block(nn.Module):
    """torchvision's BasicBlock, as people write it."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)
'''

TINYNETS = '''
from pathlib import Path

import torch
from torch import nn

from tinyblocks import Block  # a sibling module: the file's folder is searched

with open(Path(__file__).with_name("imported.log"), "a") as log:  # proof of every import
    log.write("x")

CONFIG = {"width": 8}


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
        self.layer2 = Block(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class NotANet:
    pass


def returns_dict(width=8):
    return {"width": width}


def raises(width=8):
    raise ValueError(f"width {width} must be even")
'''

PACKAGE = '''
from torch import nn

from .blocks import Block


def resnet_custom(num_classes=10, width=8, blocks=2):
    """A factory, as torchvision's resnet18() is one."""
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [Block(width, width) for _ in range(blocks)]
    layers += [Block(width, 2 * width, 2), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1),
               nn.Linear(2 * width, num_classes)]
    return nn.Sequential(*layers)
'''

PKG = "cepdtest_nets"  # a package name no other test imports


@pytest.fixture(scope="module")
def netdir(tmp_path_factory) -> Path:
    """A project folder with the user's networks: a file (and its sibling) and a package."""
    root = tmp_path_factory.mktemp("project")
    (root / "tinyblocks.py").write_text(BLOCKS)
    (root / "tinynets.py").write_text(TINYNETS)
    (root / PKG).mkdir()
    (root / PKG / "__init__.py").write_text("")
    (root / PKG / "blocks.py").write_text(BLOCKS)
    (root / PKG / "resnets.py").write_text(PACKAGE)
    (root / "broken.py").write_text("import torch\n\nscale = 1 / 0\n")
    (root / "badsyntax.py").write_text("def f(:\n    pass\n")
    return root


@pytest.fixture(autouse=True)
def fresh_imports(netdir, monkeypatch):
    """Each test runs in the project folder with the user's package not yet imported, and leaves
    ``sys.path`` as it found it."""
    monkeypatch.chdir(netdir)
    path = list(sys.path)
    yield
    for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
        del sys.modules[name]
    assert sys.path == path


def _imports(netdir: Path) -> int:
    log = netdir / "imported.log"
    return len(log.read_text()) if log.exists() else 0


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv: str) -> dict:
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


SHAPE = ["--input-shape", "3", "16", "16"]


@pytest.mark.slow
def test_file_class_through_every_command(netdir, tmp_path, capsys):
    """``nets.py:Class`` with --model-args: convert -> inspect -> export -> simulate -> build -> bench."""
    m = tmp_path / "tiny.pt"
    conv = _json(capsys, "convert", "--arch", "tinynets.py:TinyNet", "--model-args", '{"num_classes": 5}',
                 *SHAPE, "--flops-remaining", "0.5", "-o", str(m))  # fmt: skip
    assert 0.4 < conv["totals"]["flops_remaining"] <= 0.5
    data = torch.load(m, weights_only=True)  # plain data: the reference is text, not a pickled object
    assert data["network"] == {"ref": "tinynets.py:TinyNet", "kwargs": {"num_classes": 5}}
    assert data["arch"] is None and data["input_shape"] == [3, 16, 16]

    code, _, err = _run(capsys, "inspect", str(m))  # a recorded reference is not imported unasked
    assert code == 2 and err.count("\n") == 1
    assert "tinynets.py:TinyNet" in err and "--trust-model-code" in err and "--template" in err

    trust = "--trust-model-code"
    rows = _json(capsys, "inspect", str(m), trust)
    assert rows["input_shape"] == [1, 3, 16, 16] and rows["model"] == "tiny"
    assert rows["totals"]["flops_remaining"] == pytest.approx(conv["totals"]["flops_remaining"])
    assert {r["name"] for r in rows["layers"] if r["kind"] == "cepd"} == set(data["layers"])
    assert len(data["layers"]) >= 5

    model = load(m, trust_code=True)  # the same replacements, from the file's metadata
    assert {n for n, x in model.named_modules() if isinstance(x, CEPDConv2d)} == set(data["layers"])
    assert model.fc.out_features == 5 and model.cepd_network["ref"] == "tinynets.py:TinyNet"

    onnx_out = tmp_path / "tiny.onnx"
    res = _json(capsys, "export", str(m), trust, "--verify", "-o", str(onnx_out))
    assert res["verify"]["ok"] and onnx_out.is_file()

    sim = _json(capsys, "simulate", str(m), trust, "--target", "eyeriss")
    assert sim["model"] == "tiny" and sim["input_shape"] == [1, 3, 16, 16]

    built = tmp_path / "built"
    code, out, err = _run(capsys, "build", str(m), trust, "--target", "onnxruntime", "-o", str(built))
    assert code == 0, err
    assert (built / "model.onnx").is_file()

    code, out, err = _run(capsys, "bench", "--model", str(m), trust, "--targets", "eyeriss", "--quiet")
    assert code == 0, err
    assert "tiny-dense" in out and "tiny-cepd" in out


@pytest.mark.slow
def test_package_factory_through_every_command(netdir, tmp_path, capsys):
    """``package.module:factory`` with --model-args, imported from the current directory."""
    ref = f"{PKG}.resnets:resnet_custom"
    args = ["--model-args", '{"num_classes": 3, "width": 8, "blocks": 1}', *SHAPE]
    rows = _json(capsys, "inspect", ref, *args)  # the dense network itself, named by reference
    assert rows["model"] == "resnet_custom" and rows["totals"]["flops_remaining"] == pytest.approx(1.0)
    m = tmp_path / "res.pt"
    _json(capsys, "convert", "--arch", ref, *args, "--flops-remaining", "0.6", "-o", str(m))
    recorded = torch.load(m, weights_only=True)["network"]
    assert recorded == {"ref": ref, "kwargs": {"num_classes": 3, "width": 8, "blocks": 1}}

    trust = "--trust-model-code"
    assert _json(capsys, "inspect", str(m), trust)["totals"]["flops_remaining"] <= 0.6
    res = _json(capsys, "export", str(m), trust, "--fused", "--verify", "-o", str(tmp_path / "r.onnx"))
    assert res["verify"]["ok"]
    assert _json(capsys, "simulate", ref, *args, "--target", "eyeriss")["model"] == "resnet_custom"
    code, _, err = _run(capsys, "build", str(m), trust, "--target", "onnxruntime", "-o", str(tmp_path / "b"))
    assert code == 0, err

    # bench on the reference itself: its dense network against a conversion, on a measured target
    code, out, err = _run(capsys, "bench", "--model", ref, *args, "--flops-remaining", "0.5", "--targets",
                          "onnxruntime", "--repeats", "1", "--warmup", "0", "--quiet")  # fmt: skip
    assert code == 0, err
    assert "resnet_custom-dense" in out and "resnet_custom-cepd500" in out

    # trained dense weights (a dense file of the same network) go into --arch with --weights
    dense = reference.build(ref, {"num_classes": 3, "width": 8, "blocks": 1})
    save(dense, tmp_path / "dense.pt", input_shape=(3, 16, 16))
    again = tmp_path / "again.pt"
    _json(capsys, "convert", "--arch", ref, *args, "--weights", str(tmp_path / "dense.pt"),
          "--flops-remaining", "0.6", "-o", str(again))  # fmt: skip
    assert torch.load(again, weights_only=True)["network"] == recorded
    first = load(again, trust_code=True)[0]  # the first conv stays dense: the trained weights, unchanged
    assert not isinstance(first, CEPDConv2d) and torch.equal(first.weight, dense[0].weight)


def test_moved_model_file_says_how_to_fix_it(netdir, tmp_path, capsys, monkeypatch):
    m = netdir / "moved.pt"
    _json(capsys, "convert", "--arch", "tinynets.py:TinyNet", "--model-args", '{"num_classes": 4}', *SHAPE,
          "--flops-remaining", "0.5", "-o", str(m))  # fmt: skip
    away = tmp_path / "away"
    away.mkdir()
    shutil.move(m, away / "moved.pt")
    monkeypatch.chdir(away)
    code, _, err = _run(capsys, "inspect", "moved.pt", "--trust-model-code")
    assert code == 2 and err.count("\n") == 1
    assert "records the network tinynets.py:TinyNet, not found here: no file tinynets.py" in err
    assert "run from the folder it was converted in" in err and "--template MODULE:ATTR" in err
    # --template names where it is now; the file's recorded arguments (num_classes 4) still apply
    rows = _json(capsys, "inspect", "moved.pt", "--template", f"{netdir}/tinynets.py:TinyNet")
    assert rows["layers"][-1]["name"] == "fc"
    code, _, err = _run(capsys, "inspect", "moved.pt", "--template", f"{netdir}/tinynets.py:TinyNet",
                        "--model-args", '{"num_classes": 9}')  # fmt: skip
    assert code == 2 and "fc.weight" in err  # other arguments: the weights do not fit


@pytest.mark.slow
def test_compress_records_the_reference(netdir, tmp_path, capsys):
    out = tmp_path / "c.pt"
    code, _, err = _run(capsys, "compress", "--arch", "tinynets.py:TinyNet", "--model-args", '{"width": 8}',
                        "--data", "digits", "--flops-remaining", "0.5", "-o", str(out), "--epochs-baseline",
                        "0", "--epochs-admm", "1", "--epochs-finetune", "0", "--train-limit", "16",
                        "--test-limit", "16", "--batch-size", "16", "--threads", "1",
                        "--no-progress")  # fmt: skip
    assert code == 0, err
    data = torch.load(out, weights_only=True)
    assert data["network"] == {"ref": "tinynets.py:TinyNet", "kwargs": {"width": 8}}
    assert data["input_shape"] == [3, 32, 32] and data["layers"]
    assert _json(capsys, "inspect", str(out), "--trust-model-code")["input_shape"] == [1, 3, 32, 32]
    code, _, err = _run(capsys, "compress", "--arch", "resnet20", "--model-args", "{}", "--flops-remaining",
                        "0.5", "-o", str(tmp_path / "z.pt"))  # fmt: skip
    assert code == 2 and "--model-args goes with a MODULE:ATTR --arch" in err


@pytest.mark.parametrize("argv,message", [
    (["nonexistent_pkg.nets:Net", *SHAPE], "no module named 'nonexistent_pkg' in the current directory"),
    ([f"{PKG}.nope:Net", *SHAPE], f"no module named '{PKG}.nope'"),
    (["missing/nets.py:Net", *SHAPE], "no file missing/nets.py (relative to the current directory"),
    (["broken.py:Net", *SHAPE],
     "running broken.py raised ZeroDivisionError: division by zero (broken.py, line 3)"),
    (["badsyntax.py:Net", *SHAPE], "running badsyntax.py raised SyntaxError"),
    (["tinynets.py:TinyNett", *SHAPE],
     "tinynets.py has no attribute 'TinyNett' (it defines: TinyNet, raises"),
    (["tinynets.py:CONFIG", *SHAPE], "tinynets.py:CONFIG is a dict, not callable"),
    (["tinynets.py:NotANet", *SHAPE], "tinynets.py:NotANet is a class but not an nn.Module subclass"),
    (["tinynets.py:returns_dict", *SHAPE], "tinynets.py:returns_dict() returned dict, not an nn.Module"),
    (["tinynets.py:raises", *SHAPE], "building tinynets.py:raises() raised ValueError: width 8 must be even "
                                     "(tinynets.py, line"),
    (["tinynets.py:TinyNet", *SHAPE, "--model-args", '{"depth": 3}'],
     "tinynets.py:TinyNet does not take these arguments (got an unexpected keyword argument 'depth'); it "
     "takes: num_classes, width"),
    (["tinynets.py:TinyNet", *SHAPE, "--model-args", "{num_classes: 3}"], "--model-args: not JSON"),
    (["tinynets.py:TinyNet", *SHAPE, "--model-args", "[3]"], "--model-args must be a JSON object"),
    (["tinynets.py:TinyNet"], "tinynets.py:TinyNet: give --input-shape C H W"),
    (["tinynets.py", *SHAPE], "tinynets.py is Python source: name the network in it"),
    (["os:system", *SHAPE], "'os' is Python's standard library, not a network"),
    (["torch:load", *SHAPE], "only nn.Module classes are taken, not functions"),
    (["tinynets.py:TinyNet.__init__", *SHAPE], "is a Python internal, not a network"),
    (["resnet20", "--model-args", "{}"], "--model-args goes with a MODULE:ATTR network"),
    (["resnet20", "--template", "tinynets.py:TinyNet"], "--template goes with a model file"),
    (["no-such-thing"], "neither a model file nor a zoo model"),
])  # fmt: skip
def test_reference_errors_are_one_line(netdir, capsys, argv, message):
    code, _, err = _run(capsys, "inspect", *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("cepd-deploy: error: "), err
    assert message in err


@pytest.mark.parametrize("argv", [
    ["tinynets.py:TinyNet"],
    ["tinynets.py:TinyNet", *SHAPE, "--model-args", "[3]"],
    ["tinynets.py:TinyNet", *SHAPE, "--model-args", "{bad"],
    ["tinynets.py:TinyNet.__init__", *SHAPE],
])  # fmt: skip
def test_refused_before_the_users_code_runs(netdir, capsys, argv):
    before = _imports(netdir)
    assert _run(capsys, "inspect", *argv)[0] == 2
    assert _imports(netdir) == before
    assert _run(capsys, "inspect", "tinynets.py:TinyNet", *SHAPE)[0] == 0
    assert _imports(netdir) == before + 1  # the log does count imports


def test_help_says_naming_a_module_runs_it(capsys):
    for command in ("inspect", "export", "simulate", "build", "bench", "convert"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "MODULE:ATTR" in text and "runs that code" in text and "--model-args" in text, command
