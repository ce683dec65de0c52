"""Hostile and unlucky YAML: accelerator specs, rank configs and the board spec. No alias
expansion, duplicate keys or size blows up; sizes have sane bounds; every refusal is one short
line; every case runs under a memory cap and a time limit."""

from __future__ import annotations

import copy
import json
import math
import time

import pytest
import yaml
from compress_helpers import Tiny
from hostile_helpers import assert_one_line_error, cli_capped, one_line_or_success
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cepd_deploy import convert
from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.lower import lower
from cepd_deploy.targets.eyeriss.simulator import simulate
from cepd_deploy.targets.eyeriss.spec import _BOUNDS, load_spec, parse_spec, spec_path
from cepd_deploy.untrusted import MAX_BYTES, brief, parse_yaml

LAUGHS = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
)


def _raw() -> dict:
    return yaml.safe_load(spec_path("eyeriss_v1").read_text())


def _level(data: dict, name: str) -> dict:
    return next(x for x in data["levels"] if x["name"] == name)


@pytest.fixture(scope="module")
def plan():
    return lower(Tiny().eval(), (1, 3, 16, 16))


def _spec_file(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused(fn, *args, needle: str = "", seconds: float = 30.0):
    result = one_line_or_success(fn, *args, seconds=seconds)
    assert isinstance(result, CEPDError), f"accepted: {brief(result)}"
    assert needle in str(result), str(result)
    assert len(str(result)) < 300  # values are quoted in brief, never in full
    return result


# -- YAML itself --------------------------------------------------------------------------------
def test_billion_laughs_in_a_spec_name_and_clock(tmp_path):
    base = yaml.safe_dump(_raw(), sort_keys=False)
    for field in ("name", "clock_mhz"):
        text = LAUGHS + "\n" + base.replace(f"{field}: ", f"{field}: *a8\nx_{field}: ", 1)
        _refused(load_spec, _spec_file(tmp_path, text), needle="anchors")
    text = base.replace("name: eyeriss_v1", "name: &n eyeriss_v1\ndescription: *n")
    _refused(load_spec, _spec_file(tmp_path, text), needle="anchors (&n) are not allowed")


def test_duplicate_keys_version_true_and_merge_keys(tmp_path):
    base = yaml.safe_dump(_raw(), sort_keys=False)
    cases = {
        base.replace("clock_mhz: 200", "clock_mhz: 200\nclock_mhz: 100"): "duplicate key 'clock_mhz'",
        base.replace("version: 1", "version: true"): "version: expected 1, got True",
        base.replace("version: 1", "version: 1.0"): "version: expected 1, got 1.0",
        base.replace("rows: 12", "<<: {rows: 12}"): "merge keys",
        base.replace("name: eyeriss_v1", "name: !!python/name:os.system"): "not valid YAML",
        base.replace("clock_mhz: 200", "clock_mhz: " + "9" * 5000): "not valid YAML",
        base + "\n" + "1: one\n": "unknown key 1",
        base + "\n" + "[1, 2]: pair\n": "a mapping key must be a plain value",
    }
    for text, needle in cases.items():
        _refused(load_spec, _spec_file(tmp_path, text), needle=needle)


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    base = yaml.safe_dump(_raw(), sort_keys=False)
    deep = base + "description: " + "[" * 100_000 + "]" * 100_000 + "\n"
    _refused(load_spec, _spec_file(tmp_path, deep), needle="nested deeper")
    block = base + "".join(" " * i + f"k{i}:\n" for i in range(200))
    _refused(load_spec, _spec_file(tmp_path, block), needle="nested deeper")


def test_a_47_mb_yaml_is_refused_at_once(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write(yaml.safe_dump(_raw(), sort_keys=False) + "ignored:\n")
        f.write("  - 0\n" * 8_000_000)  # 48 MB
    start = time.monotonic()
    _refused(load_spec, big, needle=f"larger than {MAX_BYTES // 1024} KiB")
    assert time.monotonic() - start < 2.0


def test_node_count_is_bounded():
    start = time.monotonic()
    with pytest.raises(CEPDError, match="YAML values"):
        parse_yaml("x: [" + ",".join(["0"] * 100_000) + "]")
    assert time.monotonic() - start < 10.0


# -- spec values --------------------------------------------------------------------------------
SPEC_CASES = {
    "bandwidth 1e-300": (("dram", "bandwidth_mb_per_s"), 1e-300, "must be between"),
    "rows 1e6": (("array", "rows"), 1_000_000, "array.rows: must be between 1 and 256"),
    "cols 1e6": (("array", "cols"), 1_000_000, "array.cols"),
    "glb rate 1e-300": (("glb", "psum_read_words_per_cycle"), 1e-300, "glb.psum_read_words_per_cycle"),
    "spad 2^40": (("rf", "filter_size_words"), 2**40, "rf.filter_size_words"),
    "macs inf": (("rf", "macs_per_cycle"), math.inf, "expected a number"),
    "clock 1e300": ((None, "clock_mhz"), 1e300, "clock_mhz: must be between"),
    "word_bits 4096": ((None, "word_bits"), 4096, "word_bits"),
    "energy -1": (("rf", "access_energy_rel"), -1, "rf.access_energy_rel: must be >= 0"),
    "name laughs": ((None, "name"), "lol" * 10_000, "expected one line of at most 100 characters"),
    "name newline": ((None, "name"), "a\nb", "expected one line"),
    "name list": ((None, "name"), ["x"] * 10_000, "expected a non-empty string"),
    "description dict": ((None, "description"), {"a": 1}, "description: expected text"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_values_have_sane_bounds(case):
    (level, key), value, needle = SPEC_CASES[case]
    data = _raw()
    (data if level is None else _level(data, level))[key] = value
    _refused(parse_spec, data, needle=needle)


def test_specs_at_the_bounds_simulate_to_finite_figures(plan):
    """Every number at its lowest, at its highest, and the rates lowest with the capacities
    highest: the simulator gives finite figures or a one-line error, never an OverflowError."""
    rates = ("clock_mhz", "bandwidth_mb_per_s", "words_per_cycle", "macs_per_cycle")
    outcomes = []
    for variant in ("low", "high", "slow"):
        data = _raw()
        for holder in [data, *data["levels"]]:
            for key in list(holder):
                bound = next((b for suffix, b in _BOUNDS.items() if key.endswith(suffix)), None)
                if bound is not None:
                    low = variant == "low" or (variant == "slow" and key.endswith(rates))
                    holder[key] = bound[0] if low else bound[1]
        spec = parse_spec(data)
        result = one_line_or_success(simulate, plan, spec, seconds=60)
        outcomes.append(type(result).__name__)
        if not isinstance(result, CEPDError):
            totals = result.to_json()["totals"]
            assert all(math.isfinite(v) for v in totals.values() if isinstance(v, float)), totals
    assert outcomes.count("SimResult") >= 2, outcomes  # the low corner fits no mapping: a one-line error


TOP_FIELDS = ("version", "name", "clock_mhz", "word_bits", "mac_energy_rel", "zero_gating")
SPEC_FIELDS = [(None, k) for k in TOP_FIELDS]
SPEC_FIELDS += [(lv, k) for lv in ("dram", "glb", "array", "rf") for k in _level(_raw(), lv) if k != "name"]
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 255, 256, 257, 1024, 10**6, 2**31]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 5e-324, 1e-3, 1e300, -0.0]),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(SPEC_FIELDS), HOSTILE), min_size=1, max_size=3),
       via_file=st.booleans())  # fmt: skip
def test_fuzzed_specs_end_in_success_or_one_line(plan, tmp_path, edits, via_file):
    data = _raw()
    for (level, key), value in edits:
        (data if level is None else _level(data, level))[key] = value
    if via_file:
        path = tmp_path / "fuzz.yaml"
        path.write_text(yaml.safe_dump(data))
        spec = one_line_or_success(load_spec, path)
    else:
        spec = one_line_or_success(parse_spec, copy.deepcopy(data))
    if not isinstance(spec, CEPDError):
        result = one_line_or_success(simulate, plan, spec, seconds=60)
        if not isinstance(result, CEPDError):
            assert math.isfinite(result.to_json()["totals"]["latency_ms"])


RULE_KEYS = st.sampled_from(["p", "q", "psum_channels", "width_tiles", "m_tile", "image_sets", "when", "x"])
RANGE_KEYS = st.sampled_from(["min", "max", "e", "c", "y"])  # a range, or a `when`'s dimensions
RANGE = st.one_of(HOSTILE, st.dictionaries(RANGE_KEYS, HOSTILE, max_size=3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.one_of(HOSTILE, st.lists(st.dictionaries(RULE_KEYS, RANGE, max_size=3), max_size=4)))
def test_fuzzed_mapping_constraints_end_in_success_or_one_line(plan, rules):
    data = _raw()
    data["constraints"] = rules
    spec = one_line_or_success(parse_spec, data)
    if not isinstance(spec, CEPDError):  # a mapping, or "no mapping ... within its constraints"
        result = one_line_or_success(simulate, plan, spec, seconds=60)
        if not isinstance(result, CEPDError):
            assert math.isfinite(result.to_json()["totals"]["latency_ms"])


@pytest.mark.slow
def test_simulate_refuses_a_spec_of_a_million_rows_at_once(tmp_path):
    data = _raw()
    _level(data, "array")["rows"] = 1_000_000
    path = _spec_file(tmp_path, yaml.safe_dump(data, sort_keys=False), "huge.yaml")
    proc = cli_capped(["simulate", "resnet20", "--spec", str(path)], cwd=tmp_path, seconds=60)
    assert_one_line_error(proc, "huge.yaml", "array.rows")


# -- rank configs -------------------------------------------------------------------------------
def _convert(config):
    return convert(Tiny(), config=config, input_shape=(1, 3, 16, 16))


CONFIG_CASES = {
    "ranks '88'": ({"layers": {"conv2": {"ranks": "88"}}}, "ranks: expected a list of integers"),
    "ranks 8.7": ({"layers": {"conv2": {"ranks": [8.7, 4]}}}, "ranks: expected a list of integers"),
    "ranks true": ({"layers": {"conv2": {"ranks": [True, 4]}}}, "ranks: expected a list"),
    "ranks .inf": ({"layers": {"conv2": {"ranks": math.inf}}}, "got inf"),
    "ranks 2^40": ({"layers": {"conv2": {"ranks": [2**40, 4]}}}, "in [1, 65536]"),
    "typo entry key": ({"layers": {"conv2": {"ranks": [4, 4], "kapa": 2}}}, "unknown key 'kapa'"),
    "typo top key": ({"sparsty": 0.5, "layers": {"conv2": {"ranks": [4, 4]}}}, "unknown key 'sparsty'"),
    "sparsity abc": ({"sparsity": "abc", "layers": {"conv2": {"ranks": [4, 4]}}}, "sparsity: expected a"),
    "sparsity 2": ({"layers": {"conv2": {"ranks": [4, 4], "sparsity": 2}}}, "in [0, 1], got 2"),
    "kappa 1.5": ({"layers": {"conv2": {"ranks": [4, 4], "kappa": 1.5}}}, "kappa: expected an integer"),
    "pattern int": ({"layers": {7: {"ranks": [4, 4]}}}, "layers: 7 is not a module name"),
    "pattern null": ({"layers": {None: {"ranks": [4, 4]}}}, "layers: None is not a module name"),
    "entry list": ({"layers": {"conv2": [4, 4]}}, "expected a mapping with 'ranks'"),
    "layout int": ({"layout": 3, "layers": {"conv2": {"ranks": [4, 4]}}}, "layout: expected a layout"),
    "layout huge": ({"layers": {"conv2": {"ranks": [4, 4], "layout": "o" * 10**5}}}, "layout: expected"),
    "no layers": ({"layer": {}}, "needs a 'layers' mapping"),
    "no match": ({"layers": {"x" * 10_000: {"ranks": [4, 4]}}}, "not a module name"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_rank_config_values(case):
    config, needle = CONFIG_CASES[case]
    _refused(_convert, config, needle=needle)


def test_rank_config_files(tmp_path):
    good = "layers:\n  conv2: {ranks: [4, 4], kappa: 2}\n"
    model = _convert(_spec_file(tmp_path, good, "ok.yaml"))
    assert model.conv2.spec.ranks == (4, 4) and model.conv2.spec.kappa == 2
    cases = {
        "r1.yaml": ("layers:\n  conv2: {ranks: '88'}\n", "ranks: expected a list of integers in [1, 65536], "
                    "got '88'"),
        "r2.yaml": ("layers:\n  conv2: {ranks: 88}\n", "got 88"),
        "r3.yaml": ("layers:\n  conv2: {ranks: .inf}\n", "got inf"),
        "r4.yaml": ("sparsity: abc\nlayers:\n  conv2: {ranks: [4, 4]}\n", "sparsity: expected a number"),
        "r5.yaml": ("layers:\n  conv2: {ranks: [4, 4]}\n  conv2: {ranks: [2, 2]}\n", "duplicate key 'conv2'"),
        "r6.yaml": (LAUGHS + "\nlayout: *a8\nlayers:\n  conv2: {ranks: [4, 4]}\n", "anchors"),
        "r7.yaml": ("layers:\n  ~: {ranks: [4, 4]}\n", "None is not a module name"),
        "r8.yaml": ("layers:\n  3: {ranks: [4, 4]}\n", "3 is not a module name"),
        "r9.yaml": ("layers:\n  conv2: {rank: [4, 4]}\n", "expected a mapping with 'ranks'"),
        "r10.yaml": ("layers:\n  conv2: {ranks: [4, 4], sparsity: .nan}\n", "sparsity: expected a number"),
        "d.json": ('{"layers": {"conv2": {"ranks": [4, 4]}, "conv2": {"ranks": [2, 2]}}}', "duplicate key"),
        "n.json": ('{"layers": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
        "s.json": ('{"layers": {"conv2": {"ranks": [4, 4], "sparsity": NaN}}}', "sparsity: expected a"),
    }  # fmt: skip
    for name, (text, needle) in cases.items():
        _refused(_convert, _spec_file(tmp_path, text, name), needle=needle)
    assert json.loads('{"a": 1}')  # (the JSON module itself is untouched)


RANK_ITEMS = st.one_of(st.integers(-3, 100), st.floats(0, 20), st.text(max_size=3), st.booleans())
CONFIG_HOSTILE = st.one_of(HOSTILE, st.lists(RANK_ITEMS, max_size=4))
ENTRY_KEYS = st.sampled_from(["ranks", "kappa", "sparsity", "layout", "rank"])


@settings(max_examples=40, deadline=None)
@given(top=st.dictionaries(st.sampled_from(["sparsity", "layout", "extra"]), CONFIG_HOSTILE, max_size=2),
       pattern=st.one_of(st.sampled_from(["conv2", "conv*", "*", "fc", ""]), st.integers(), st.none()),
       entry=st.dictionaries(ENTRY_KEYS, CONFIG_HOSTILE, max_size=4))  # fmt: skip
def test_fuzzed_rank_configs_end_in_success_or_one_line(top, pattern, entry):
    config = {**top, "layers": {pattern: entry}}
    result = one_line_or_success(_convert, config)
    if not isinstance(result, CEPDError):
        assert result is not None


# -- the board spec -----------------------------------------------------------------------------
def test_board_spec_is_read_strictly(tmp_path, monkeypatch):
    from cepd_deploy import hw
    from cepd_deploy.targets.pynq_z1.config import load_board

    shipped = hw.path("pynq_z1", "board.yaml").read_text()
    board = tmp_path / "board.yaml"
    monkeypatch.setattr(hw, "path", lambda *parts: board)
    cases = {
        shipped.replace("version: 1", "version: true"): "expected version 1",
        shipped.replace("dsp: 220", "dsp: 220\n  dsp: 221"): "duplicate key 'dsp'",
        shipped.replace("lut: 53200", "lut: .inf"): "resources.lut",
        shipped.replace("lut: 53200", "lut: '53200'"): "resources.lut",
        LAUGHS + "\n" + shipped.replace("part: xc7z020clg400-1", "part: *a8"): "anchors",
    }
    for text, needle in cases.items():
        board.write_text(text)
        _refused(load_board.__wrapped__, "pynq-z1", needle=needle)
    board.write_text(shipped)
    assert load_board.__wrapped__("pynq-z1").resources.dsp == 220
