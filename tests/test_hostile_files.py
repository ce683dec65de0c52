"""Hostile and unlucky model files: metadata is checked against the stored tensors before any
network is built (no memory bomb), bad values are one-line refusals, and lowering traces shapes
without allocating the input. Every case runs under a memory cap and a time limit."""

from __future__ import annotations

import copy
import math
import zipfile

import pytest
import torch
from hostile_helpers import assert_one_line_error, cli_capped, one_line_or_success
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cepd_deploy import build_model, convert, load, save
from cepd_deploy.errors import CEPDError
from cepd_deploy.model.format import read
from cepd_deploy.plan.cost import plan_macs

LAYER = "layer1.0.conv1"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small CEPD model file (ResNet-20 at 50% FLOPs) and its payload."""
    torch.manual_seed(0)
    path = save(convert(build_model("resnet20"), flops_remaining=0.5), tmp_path_factory.mktemp("m") / "m.pt")
    return path, torch.load(path, weights_only=True)


def _variant(good, tmp_path, change, name="bad.pt"):
    data = copy.deepcopy(good[1])
    change(data)
    out = tmp_path / name
    torch.save(data, out)
    return out


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return change


def _nan(data):
    data["state_dict"]["fc.weight"][0, 0] = float("nan")


def _inf(data):
    data["state_dict"][f"{LAYER}.cores.0"][0, 0, 0] = float("inf")


def _negative_variance(data):
    data["state_dict"]["bn1.running_var"][3] = -0.5


def _shared_lists(data):  # a pickle may share one list many times: 2^60 values when walked
    x: list = [0]
    for _ in range(60):
        x = [x, x]
    data["info"]["x"] = x


CASES = {
    # memory bombs from metadata: refused before anything is built
    "num_classes 15e6": (_set("arch", "kwargs", {"num_classes": 15_000_000}), "implies (15000000, 64)"),
    "num_classes 2^40": (_set("arch", "kwargs", {"num_classes": 2**40}), "arch.kwargs.num_classes"),
    "kernel 3000x3000": (_set("layers", LAYER, "kernel_size", [3000, 3000]), "kernel_size must be 2"),
    "kernel 1000x1000": (_set("layers", LAYER, "kernel_size", [1000, 1000]), "implies (2, 16, 1000, 1000)"),
    "ranks 60000": (_set("layers", LAYER, "ranks", [60000, 60000]), "has shape"),
    "channels 2^30": (_set("layers", LAYER, "out_channels", 2**30), "out_channels must be in"),
    "many factors": (_set("layers", LAYER, "o_factors", [1] * 10_000), "o_factors must be"),
    "image 1e5": (_set("input_shape", [3, 100_000, 100_000]), "field 'input_shape'"),
    "shared lists": (_shared_lists, "field 'info' is not plain data"),
    # wrong types and values: one line, not a traceback
    "string input_shape": (_set("input_shape", "abc"), "field 'input_shape'"),
    "float input_shape": (_set("input_shape", [3.0, 32, 32]), "field 'input_shape'"),
    "version true": (_set("version", True), "unknown CEPD model file version True"),
    "kwargs typo": (_set("arch", "kwargs", {"num_clases": 10}), "takes no argument 'num_clases'"),
    "kwargs string": (_set("arch", "kwargs", {"num_classes": "10"}), "arch.kwargs.num_classes"),
    "kwargs bool": (_set("arch", "kwargs", {"num_classes": True}), "arch.kwargs.num_classes"),
    "unknown arch": (_set("arch", "name", "resnet9000"), "unknown architecture"),
    "arch extra key": (_set("arch", "code", "print(1)"), "field 'arch' malformed"),
    "stride 0": (_set("layers", LAYER, "stride", [0, 1]), "stride must be"),
    "padding -1": (_set("layers", LAYER, "padding", [-1, 1]), "padding must be"),
    "dilation 0": (_set("layers", LAYER, "dilation", [1, 0]), "dilation must be"),
    "kappa > out": (_set("layers", LAYER, "kappa", 10**6), "kappa must be"),
    "kappa bool": (_set("layers", LAYER, "kappa", True), "lacks a valid 'kappa'"),
    "long layout": (_set("layers", LAYER, "layout", "o" * 100_000), "layout must be a short layout spec"),
    "bad layout": (_set("layers", LAYER, "layout", "o-q-i"), "invalid"),
    "meta extra field": (_set("layers", LAYER, "exec", 1), "unknown field 'exec'"),
    "layer name int": (_set("layers", 7, {}), "layer name 7"),
    "state not tensor": (_set("state_dict", "fc.bias", [0.0] * 10), "is not a tensor"),
    "s_index float": (_set("state_dict", f"{LAYER}.s_index", torch.zeros(2)), "torch.float32"),
    "nan weight": (_nan, "holds 1 NaN/Inf value(s)"),
    "inf core": (_inf, "holds 1 NaN/Inf value(s)"),
    "negative variance": (_negative_variance, "negative BatchNorm variances"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_metadata_is_a_one_line_refusal(good, tmp_path, case):
    change, needle = CASES[case]
    path = _variant(good, tmp_path, change)
    result = one_line_or_success(load, path, seconds=30)
    assert isinstance(result, CEPDError), f"{case}: accepted"
    assert needle in str(result), str(result)


def test_check_values_false_loads_what_it_refuses_by_default(good, tmp_path):
    path = _variant(good, tmp_path, _nan)
    model = load(path, check_values=False)
    assert math.isnan(float(model.fc.weight.detach()[0, 0]))


def test_damaged_archives(good, tmp_path):
    data = good[0].read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "tail.pt").write_bytes(data[:-100])
    deflated = zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(good[0]) as src, deflated as dst:
        for entry in src.infolist():  # a zip bomb's shape: entries that inflate past the file
            dst.writestr(entry.filename, src.read(entry.filename))
    (tmp_path / "dir.pt").mkdir()
    cases = {"empty.pt": "empty file", "half.pt": "truncated or corrupt", "tail.pt": "truncated or corrupt",
             "deflated.pt": "is compressed", "dir.pt": "not found"}  # fmt: skip
    for name, needle in cases.items():
        result = one_line_or_success(load, tmp_path / name)
        assert isinstance(result, CEPDError) and needle in str(result), (name, result)


def test_the_good_file_still_loads_exactly(good):
    model = load(good[0])
    state = good[1]["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert read(good[0])["input_shape"] == [3, 32, 32]


# -- fuzzing: valid structure, hostile values -------------------------------------------------
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 3, 7, 10, 64, 1000, 3000, 10**6, 15_000_000, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.just("o" * 5000),
    st.lists(st.sampled_from([-1, 0, 1, 2, 3, 16, 3000, 10**6, 2**40]), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(-5, 10**7), max_size=3),
)
META_KEYS = ["in_channels", "out_channels", "kernel_size", "layout", "o_factors", "i_factors", "ranks",
             "kappa", "stride", "padding", "dilation", "bias"]  # fmt: skip
TARGETS = st.one_of(
    st.tuples(st.just("layers"), st.sampled_from([LAYER, "layer3.2.conv2"]), st.sampled_from(META_KEYS)),
    st.tuples(st.just("arch"), st.just("kwargs"), st.sampled_from(["num_classes", "depth", ""])),
    st.tuples(st.just("arch"), st.sampled_from(["name", "kwargs"])),
    st.tuples(st.just("input_shape")),
    st.tuples(st.just("input_shape"), st.integers(0, 2)),
    st.tuples(st.sampled_from(["version", "format", "arch", "layers", "info"])),
    st.tuples(st.just("info"), st.text(max_size=5)),
)


def _apply(data: dict, target: tuple, value) -> None:
    node = data
    for key in target[:-1]:
        if not isinstance(node.get(key) if isinstance(node, dict) else None, (dict, list)):
            node[key] = {}
        node = node[key]
    if isinstance(node, list):
        index = target[-1] if isinstance(target[-1], int) else 0
        if index < len(node):
            node[index] = value
    else:
        node[target[-1]] = value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(TARGETS, HOSTILE), min_size=1, max_size=3),
       shape=st.lists(st.integers(0, 40), min_size=0, max_size=4))  # fmt: skip
def test_fuzzed_metadata_ends_in_success_or_one_line(good, tmp_path, edits, shape):
    data = copy.deepcopy(good[1])
    for target, value in edits:
        _apply(data, target, value)
    if shape:  # a stored tensor of another shape, too
        data["state_dict"]["fc.weight"] = torch.zeros(shape)
    path = tmp_path / "fuzz.pt"
    torch.save(data, path)
    result = one_line_or_success(load, path, seconds=30)
    if not isinstance(result, CEPDError):
        assert isinstance(result, torch.nn.Module)


# -- shapes, not tensors --------------------------------------------------------------------
def test_lowering_allocates_no_input():
    """A batch of a million (12 GB of input) and a 4000x4000 image lower under the memory cap."""
    from cepd_deploy.frontend.lower import lower

    model = build_model("resnet20").eval()
    plan = one_line_or_success(lower, model, (1_000_000, 3, 32, 32), seconds=60)
    assert not isinstance(plan, CEPDError) and plan.input_shape == (1_000_000, 3, 32, 32)
    small = lower(model, (1, 3, 32, 32))
    assert plan_macs(plan) == plan_macs(small) * 1_000_000  # the same Plan, only the batch differs
    big = one_line_or_success(lower, model, (1, 3, 4000, 4000), seconds=60)
    assert not isinstance(big, CEPDError)
    assert big.nodes[-1].out_shape == small.nodes[-1].out_shape == (1, 10)  # pooled to the classifier


def test_lowering_still_refuses_a_shape_the_model_cannot_take():
    from cepd_deploy.frontend.lower import lower

    result = one_line_or_success(lower, build_model("resnet20").eval(), (1, 5, 32, 32))
    assert isinstance(result, CEPDError) and "does not accept input shape" in str(result)


@pytest.mark.slow
def test_cli_under_a_2_gib_cap(good, tmp_path):
    """The issue's commands, end to end in a capped subprocess: refusals are one line, the big
    shapes run."""
    bomb = _variant(good, tmp_path, _set("arch", "kwargs", {"num_classes": 15_000_000}), "bomb.pt")
    assert_one_line_error(cli_capped(["inspect", str(bomb)], cwd=tmp_path), "bomb.pt", "15000000")
    kernel = _variant(good, tmp_path, _set("layers", LAYER, "kernel_size", [3000, 3000]), "kernel.pt")
    assert_one_line_error(cli_capped(["inspect", str(kernel)], cwd=tmp_path), "kernel_size")
    text = _variant(good, tmp_path, _set("input_shape", "abc"), "text.pt")
    assert_one_line_error(cli_capped(["inspect", str(text)], cwd=tmp_path), "input_shape")
    for args in (["inspect", str(good[0]), "--input-shape", "3", "4000", "4000"],
                 ["simulate", str(good[0]), "--batch", "1000000"]):  # fmt: skip
        proc = cli_capped(args, cwd=tmp_path, seconds=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
