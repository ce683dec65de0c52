"""Eyeriss specs: every shipped preset loads; bad specs are one-line errors naming the field."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from cepd_deploy.errors import CEPDError
from cepd_deploy.targets.eyeriss.spec import LEVELS, Constraint, load_spec, parse_spec, presets, spec_path


def _raw(name: str = "eyeriss_v1") -> dict:
    return yaml.safe_load(spec_path(name).read_text())


def _level(data: dict, name: str) -> dict:
    return next(x for x in data["levels"] if x["name"] == name)


@pytest.mark.parametrize("name", presets())
def test_every_shipped_spec_loads(name):
    spec = load_spec(name)
    assert spec.name == name
    assert spec.pes == spec.array.rows * spec.array.cols > 0
    assert 0 < spec.glb_words and spec.dram_words_per_cycle > 0
    assert [x["name"] for x in _raw(name)["levels"]] == list(LEVELS)  # outermost to innermost


def test_presets_include_the_chip_and_a_scaled_one():
    assert {"eyeriss_v1", "eyeriss_v1_chip", "eyeriss_scaled"} <= set(presets())
    assert load_spec("eyeriss_scaled").peak_gmacs > load_spec("eyeriss_v1").peak_gmacs


def test_eyeriss_v1_is_the_published_chip():
    s = load_spec("eyeriss_v1")
    assert (s.array.rows, s.array.cols, s.pes) == (12, 14, 168)
    assert (s.rf.filter_size_words, s.rf.ifmap_size_words, s.rf.psum_size_words) == (224, 12, 24)
    assert s.glb.size_kib == 108 and s.clock_mhz == 200 and s.word_bits == 16
    # ISCA 2016 Table IV: DRAM 200, GLB 6, array 2, RF 1 (MAC = 1)
    energies = (s.dram.access_energy_rel, s.glb.access_energy_rel, s.array.access_energy_rel,
                s.rf.access_energy_rel, s.mac_energy_rel)  # fmt: skip
    assert energies == (200, 6, 2, 1, 1)
    assert s.peak_gmacs == pytest.approx(33.6)  # 168 PEs x 200 MHz
    assert s.glb_words == 100 * 1024 // 2  # 100 KB of 16-bit words hold ifmaps and psums


def test_the_chip_preset_is_eyeriss_v1_with_mapping_constraints():
    chip, v1 = load_spec("eyeriss_v1_chip"), load_spec("eyeriss_v1")
    assert not v1.constraints and not load_spec("eyeriss_scaled").constraints  # the free search
    assert dataclasses.replace(chip, name=v1.name, source=v1.source, constraints=()) == v1
    # psum_channels x ceil(e / 14) <= 8, at least 1: one rule per band of output heights
    assert chip.constraints == (
        Constraint((("psum_channels", 1, 1),), (("e", 57, None),)),
        Constraint((("psum_channels", None, 2),), (("e", 29, 56),)),
        Constraint((("psum_channels", None, 4),), (("e", 15, 28),)),
        Constraint((("psum_channels", None, 8),), (("e", None, 14),)),
    )


def test_constraints_parse_pins_and_ranges():
    data = _raw()
    data["constraints"] = [{"p": 16, "q": {"max": 4}, "when": {"c": {"min": 3}, "r": 3}},
                           {"e_tile": {"min": 2}}]  # fmt: skip
    spec = parse_spec(data)
    assert spec.constraints == (Constraint((("p", 16, 16), ("q", None, 4)), (("c", 3, None), ("r", 3, 3))),
                                Constraint((("e_tile", 2, None),)))  # fmt: skip
    assert spec.constraints[0].applies(dataclasses.make_dataclass("P", ["c", "r"])(5, 3))
    assert not spec.constraints[0].applies(dataclasses.make_dataclass("P", ["c", "r"])(2, 3))


def test_default_and_path_and_instance(tmp_path):
    assert load_spec(None) == load_spec("eyeriss_v1")
    path = tmp_path / "mine.yaml"
    path.write_text(spec_path("eyeriss_v1").read_text())
    mine = load_spec(path)
    assert mine.array == load_spec().array
    assert load_spec(mine) is mine


def _mutate(edit):
    data = copy.deepcopy(_raw())
    edit(data)
    return data


BAD = {
    "unknown top key": (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    "unknown level key": (lambda d: _level(d, "rf").update(weight_spad=3), "unknown key 'weight_spad'"),
    "missing field": (lambda d: _level(d, "glb").pop("usable_kib"), "missing field 'usable_kib'"),
    "missing top": (lambda d: d.pop("clock_mhz"), "missing field 'clock_mhz'"),
    "negative size": (lambda d: _level(d, "rf").update(ifmap_size_words=-12), "rf.ifmap_size_words"),
    "zero size": (lambda d: _level(d, "array").update(rows=0), "array.rows"),
    "zero clock": (lambda d: d.update(clock_mhz=0), "clock_mhz"),
    "not a number": (lambda d: _level(d, "dram").update(bandwidth_mb_per_s="x"), "dram.bandwidth_mb_per_s"),
    "fraction for int": (lambda d: _level(d, "array").update(cols=13.5), "array.cols"),
    "bool for number": (lambda d: d.update(word_bits=True), "word_bits"),
    "bad choice": (lambda d: _level(d, "dram").update(compression="zip"), "dram.compression"),
    "bad flag": (lambda d: d.update(zero_gating="yes"), "zero_gating"),
    "level order": (lambda d: d["levels"].reverse(), "levels"),
    "version": (lambda d: d.update(version=2), "version"),
    "usable > size": (lambda d: _level(d, "glb").update(usable_kib=200), "glb.usable_kib"),
    # mapping constraints (a list of rules; see hw/eyeriss/eyeriss_v1_chip.yaml)
    "constraints not a list": (lambda d: d.update(constraints={"p": 1}), "constraints: expected a list"),
    "constraint not a mapping": (lambda d: d.update(constraints=[3]), "constraints[0]: expected a mapping"),
    "unknown quantity": (lambda d: d.update(constraints=[{"pp": 1}]), "constraints[0]: unknown key 'pp'"),
    "unknown dimension": (lambda d: d.update(constraints=[{"p": 1, "when": {"k": 1}}]), "when: unknown key"),
    "only a when": (lambda d: d.update(constraints=[{"when": {"c": 1}}]), "bounds no mapping"),
    "zero pin": (lambda d: d.update(constraints=[{"q": 0}]), "constraints[0].q: must be between 1"),
    "float pin": (lambda d: d.update(constraints=[{"q": 1.5}]), "constraints[0].q: expected an integer"),
    "bool pin": (lambda d: d.update(constraints=[{"q": True}]), "constraints[0].q: expected an integer"),
    "min above max": (lambda d: d.update(constraints=[{"q": {"min": 3, "max": 2}}]), "min 3 is above max 2"),
    "bad range key": (lambda d: d.update(constraints=[{"q": {"least": 1}}]), "constraints[0].q: unknown key"),
    "empty range": (lambda d: d.update(constraints=[{"q": {}}]), "constraints[0].q: expected min and/or max"),
    "huge bound": (lambda d: d.update(constraints=[{"m_tile": {"max": 2**40}}]), "m_tile.max: must be"),
    "too many rules": (lambda d: d.update(constraints=[{"p": 1}] * 65), "at most 64 rules"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_specs_are_one_line_errors_naming_the_field(case):
    edit, field = BAD[case]
    with pytest.raises(CEPDError) as info:
        parse_spec(_mutate(edit), source="bad.yaml")
    message = str(info.value)
    assert field in message and "\n" not in message and message.startswith("bad.yaml")


def test_unreadable_and_unknown_specs(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("levels: [unclosed\n")
    with pytest.raises(CEPDError, match="not valid YAML"):
        load_spec(broken)
    with pytest.raises(CEPDError, match="presets: .*eyeriss_v1"):
        load_spec("eyeriss_v9")
    with pytest.raises(CEPDError, match="not found"):
        load_spec(tmp_path / "absent.yaml")
    with pytest.raises(CEPDError, match="mapping"):
        parse_spec(["not", "a", "mapping"])
