"""Latency-aware rank allocation: the target is still met, the summed latency is what is minimised."""

from __future__ import annotations

import itertools
import json

import pytest

from cepd_deploy import build_model, convert, lower
from cepd_deploy.frontend.convert import _least_latency
from cepd_deploy.plan.cost import totals

SHAPE = (1, 3, 32, 32)


def _flops(model) -> float:
    return totals(lower(model, SHAPE))["flops_remaining"]


def test_least_latency_matches_brute_force_on_small_problems():
    # rows: (name, dense cost, [(cost, ranks)], kappa); latencies per option
    rows = [("a", 10, [(2, (1,)), (5, (2,)), (10, None)], 0),
            ("b", 10, [(3, (1,)), (6, (2,)), (10, None)], 0),
            ("c", 10, [(4, (1,)), (7, (2,)), (10, None)], 0)]  # fmt: skip
    lats = [[1.0, 1.2, 1.5], [0.4, 0.9, 2.0], [0.9, 0.95, 1.0]]
    for budget, floor in itertools.product((12, 15, 18, 21, 24), (0, 2, 5)):
        floor = budget - floor
        sel = _least_latency(rows, lats, budget, floor)
        cost = sum(r[2][k][0] for r, k in zip(rows, sel))
        best = min(sum(t[k] for t, k in zip(lats, ks))
                   for ks in itertools.product(range(3), repeat=3)
                   if floor <= sum(r[2][k][0] for r, k in zip(rows, ks)) <= budget)  # fmt: skip
        assert floor <= cost <= budget
        assert sum(t[k] for t, k in zip(lats, sel)) == pytest.approx(best)


def test_a_layer_that_is_slow_when_compressed_stays_dense():
    slow = "layer2.0.conv1"

    def latency(probe, ranks):  # MACs-like, except one layer whose CEPD form is very slow
        dense = probe.in_channels * probe.out_channels * probe.kernel[0] * probe.kernel[1]
        if ranks is None:
            return dense
        cost = ranks[0] * (probe.in_channels + probe.out_channels + 9 * ranks[0])
        strided = (probe.in_channels, probe.out_channels, probe.stride) == (16, 32, (2, 2))
        return cost * (100 if strided else 1)

    model = convert(build_model("resnet20"), flops_remaining=0.5, latency=latency)
    assert _flops(model) == pytest.approx(0.5, abs=0.01)
    assert type(model.get_submodule(slow)).__name__ == "Conv2d"
    uniform = convert(build_model("resnet20"), flops_remaining=0.5)
    assert type(uniform.get_submodule(slow)).__name__ == "CEPDConv2d"


def test_the_second_allocation_uses_in_model_times():
    # a latency model whose layers all look cheap compressed alone, but one of which ran 100x
    # slower inside the first allocation's model: the second allocation keeps it dense
    slow = "layer2.0.conv1"

    class Latency:
        seen = []

        def many(self, pairs):
            return [p.in_channels * p.out_channels * (0.1 if r else 1.0) for p, r in pairs]

        def in_model(self, model, input_shape, chosen):
            self.seen.append((model, tuple(input_shape), chosen))
            assert type(model.get_submodule(slow)).__name__ == "CEPDConv2d"  # the first allocation
            probe = chosen[slow][0]
            return lambda p, r: 100.0 if (p == probe and r is not None) else 1.0

    lat = Latency()
    model = convert(build_model("resnet20"), flops_remaining=0.6, latency=lat)
    assert _flops(model) == pytest.approx(0.6, abs=0.01)
    (first, shape, chosen), = lat.seen
    assert shape == SHAPE and set(chosen) >= {slow} and first is not model
    assert type(model.get_submodule(slow)).__name__ == "Conv2d"
    # layers of the same shape share a probe, so they are all kept dense
    same = [n for n, (p, _) in chosen.items() if p == chosen[slow][0]]
    assert all(type(model.get_submodule(n)).__name__ == "Conv2d" for n in same)


def test_layer_times_of_whole_runs_cover_every_layer(tmp_path):
    from cepd_deploy.targets.onnx import build_session, ort_library, prepare, to_model
    from cepd_deploy.targets.onnx.profile import layer_times, node_times

    dense = lower(build_model("resnet20").eval(), SHAPE)
    cepd = lower(convert(build_model("resnet20"), flops_remaining=0.5).eval(), SHAPE)
    sessions = [build_session(to_model(prepare(dense)), 1, profile=tmp_path),
                build_session(to_model(prepare(cepd), fused=True), 1, profile=tmp_path,
                              native="library" if ort_library.available() else False)]  # fmt: skip
    for plan, nodes in zip((dense, cepd), node_times(sessions, SHAPE, 3)):
        layers = layer_times(plan, nodes)
        convs = [n for n, info in plan.layers.items() if info.kind in ("conv", "cepd")]
        assert convs and all(layers.get(n, 0) > 0 for n in convs), sorted(set(convs) - set(layers))
        assert sum(layers.values()) <= sum(nodes.values()) + 1e-9
    assert not list(tmp_path.iterdir())  # the profiles are read and removed


def test_measured_in_model_scale_compares_whole_runs_with_probes(tmp_path):
    from cepd_deploy.frontend.allocation import OrtLatency
    from cepd_deploy.frontend.convert import layer_probes

    lat = OrtLatency(threads=1, repeats=3, cache=tmp_path / "lat.json", progress=False)
    model = convert(build_model("resnet20"), flops_remaining=0.5, latency=lat, rank_multiple=4)
    probes = layer_probes(model, lower(model, SHAPE))
    assert probes
    scale = lat.in_model(model, SHAPE, probes, rounds=3)
    for probe, ranks in probes.values():
        assert 0.05 < scale(probe, ranks) < 20  # an in-model time over a single-layer time
    probe = next(iter(probes.values()))[0]
    assert scale(probe, None) == 1.0  # no dense layer was timed: no correction


def test_measured_onnxruntime_latency_is_cached(tmp_path):
    from cepd_deploy.frontend.allocation import OrtLatency

    cache = tmp_path / "lat.json"
    lat = OrtLatency(threads=1, repeats=3, cache=cache)
    model = convert(build_model("resnet20"), flops_remaining=0.7, latency=lat, rank_multiple=16)
    assert _flops(model) == pytest.approx(0.7, abs=0.01)
    assert lat.measured > 0 and cache.is_file()
    table = json.loads(cache.read_text())
    assert len(table) == lat.measured and all(v > 0 for v in table.values())
    again = OrtLatency(threads=1, repeats=3, cache=cache)
    convert(build_model("resnet20"), flops_remaining=0.7, latency=again, rank_multiple=16)
    assert again.measured == 0  # every option came from the cache
    for m in model.modules():
        if type(m).__name__ == "CEPDConv2d":
            assert all(r % 16 == 0 or r == mx for r, mx in zip(m.spec.ranks, m.spec.layout.max_ranks))


def test_library_latency_keeps_the_first_stage_dense_and_is_cached(tmp_path):
    from cepd_deploy.frontend.allocation import LibraryLatency

    cache = tmp_path / "lib.json"
    lat = LibraryLatency(threads=1, repeats=3, cache=cache)
    model = convert(build_model("resnet20"), flops_remaining=0.7, latency=lat, rank_multiple=4)
    assert _flops(model) == pytest.approx(0.7, abs=0.01)
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.count(".") == 2 and "conv" in n}
    first = [n for n in kinds if n.startswith("layer1.")]
    assert first and all(kinds[n] == "Conv2d" for n in first)  # 32x32 outputs: the stem's resolution
    assert any(k == "CEPDConv2d" for k in kinds.values())
    timed = [(json.loads(k), v) for k, v in json.loads(cache.read_text()).items()]
    cepd = [(p[6][2:], p[3]) for (p, ranks), _ in timed if ranks is not None]
    assert cepd and ([32, 32], [1, 1]) not in cepd  # no first-stage CEPD option was timed
    assert lat.measured == len(timed) and all(v > 0 for _, v in timed)
    again = LibraryLatency(threads=1, repeats=3, cache=cache)
    convert(build_model("resnet20"), flops_remaining=0.7, latency=again, rank_multiple=4)
    assert again.measured == 0


def test_library_latency_needs_the_library(monkeypatch):
    from cepd_deploy.errors import CEPDError
    from cepd_deploy.frontend.allocation import LibraryLatency, allocation_kwargs
    from cepd_deploy.targets.onnx import ort_library

    monkeypatch.setattr(ort_library, "available", lambda: False)
    with pytest.raises(CEPDError, match="custom-op library"):
        allocation_kwargs("library-latency")
    with pytest.raises(CEPDError, match="custom-op library"):
        LibraryLatency()


def test_layer_probes_of_a_converted_model_are_the_probes_convert_timed():
    from cepd_deploy.frontend.convert import layer_probes

    asked = {}

    def latency(probe, ranks):  # records what convert asks about; MACs-like
        asked.setdefault(probe, set()).add(ranks)
        dense = probe.in_channels * probe.out_channels * probe.kernel[0] * probe.kernel[1]
        return dense if ranks is None else ranks[0] * (probe.in_channels + probe.out_channels + 9 * ranks[0])

    model = convert(build_model("resnet20"), flops_remaining=0.5, latency=latency)
    probes = layer_probes(model, lower(model, SHAPE))
    cepd = [n for n, m in model.named_modules() if type(m).__name__ == "CEPDConv2d"]
    assert sorted(probes) == sorted(cepd) and cepd
    for name, (probe, ranks) in probes.items():
        assert probe in asked and ranks in asked[probe], name  # the same shapes, act, kappa, layout


def test_inspect_latency_times_every_cepd_layer_against_its_dense_conv(tmp_path, monkeypatch, capsys):
    from cepd_deploy.cli import main

    monkeypatch.setenv("CEPD_DEPLOY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "r20.pt"
    assert main(["convert", "--arch", "resnet20", "--flops-remaining", "0.5", "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(path), "--latency", "onnxruntime", "--threads", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for row in data["layers"]:
        timed = row["kind"] == "cepd"
        assert ("ms" in row and "dense_ms" in row) == timed, row["name"]
        if timed:
            assert row["ms"] > 0 and row["dense_ms"] > 0
    assert data["latency"]["runtime"] == "onnxruntime" and data["latency"]["machine"]["threads"] == 1
    stages = data["latency"]["dense_stages"]  # the whole model, as export --dense-stages writes it
    assert stages["runtime"] == "onnxruntime" and len(stages["candidates"]) == 4
    (cache,) = (tmp_path / "cache").glob("onnx-latency-*.json")
    measured = cache.read_text()
    assert main(["inspect", str(path), "--latency", "onnxruntime", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "dense ms" in text and "slower than their dense conv alone on this CPU:" in text
    assert "measured on:" in text and "whole model: " in text
    assert cache.read_text() == measured  # the second run timed nothing: every layer was cached
