"""Which CEPD layers a runtime runs faster dense, measured on this CPU in whole-model runs.

A CEPD layer can run as the dense conv its L + S make (the same function, more MACs:
``lower(..., dense=names)``). Where the runtime's dense conv beats the layer's TT chain plus S,
that is the faster program. Single-layer timings do not tell which layers these are: in a whole
network a layer on a large map reads its input and residual cold from the layer before, and
every switch between the runtime's own conv and a CEPD node adds layout reorders and unfused
epilogues. Measured on CEPD ResNet-50 (uniform ranks, 66.3% FLOPs, AVX2, 2 threads), running
dense the 11 layers that single-layer timings call slower made the model 3% slower; running
dense its 56x56 stage made it 4% faster.

So the candidates are stages: the CEPD layers whose output map has at least ``s`` pixels, for
each map size ``s`` of the network (largest first), from none to all of them. Each candidate is
built and the whole model run on the runtime, all candidates interleaved in one process and
timed node by node; the fastest wins, and a candidate with more dense layers has to be faster by
``margin`` than one with fewer. Running everything dense is a candidate, so the chosen program
is never slower than the dense rebuild beyond the timing noise.

On the custom-op library a second choice follows, per layer: whether the kernel or onnxruntime's
own ops run it (the fused node's function body; for a dense 1x1 conv, leaving it where
onnxruntime put it). The chosen program is run whole on both and timed node by node; the layers
onnxruntime ran at least ``LAYER_MARGIN`` faster are left to it, and that mix is kept only if it
runs faster whole (by ``margin``) than the kernel running every layer it can. Measured on CEPD
ResNet-50 (46.1% FLOPs, library-latency allocation, AVX2 Zen 3, 2 threads), onnxruntime was the
faster runtime for the stride-2 layers and the small-rank 1x1 layers on deep inputs, and for the
dense 1x1 convs the library would move onto the kernel (see docs/onnx.md for the figures).

>>> choice = dense_stages(model, (1, 3, 224, 224), "onnxruntime-native")  # doctest: +SKIP
>>> plan = lower(model, (1, 3, 224, 224), dense=choice.names)             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn
from tqdm import tqdm

from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.lower import lower
from cepd_deploy.plan.ir import Plan
from cepd_deploy.targets.onnx.profile import node_times

#: runtimes the choice can be measured on: the portable export on stock onnxruntime, the fused
#: export on the custom-op library (the bench targets of the same names)
RUNTIMES = ("onnxruntime", "onnxruntime-native")
#: a layer is left to onnxruntime where its own ops ran it at least this much faster (in-model)
LAYER_MARGIN = 0.1


@dataclass(frozen=True)
class DenseStages:
    """The chosen layers (``names``, to run dense), what every candidate measured, and the Plan
    to run (the model lowered with ``names`` dense)."""

    runtime: str
    names: tuple[str, ...]
    #: per candidate, largest output map first: (smallest map run dense in pixels, or 0 for none;
    #: its layers; its time in ms)
    candidates: tuple[tuple[int, tuple[str, ...], float], ...]
    plan: Plan = field(repr=False, compare=False)
    #: the library only: layers left to onnxruntime's own ops (``ort_library.mark_standard``), and
    #: (ms with the kernel on every layer it runs, ms with those left to onnxruntime), if measured
    standard: tuple[str, ...] = ()
    standard_ms: tuple[float, float] | None = None

    def to_json(self) -> dict:
        out = {"runtime": self.runtime, "dense_layers": list(self.names),
               "candidates": [{"min_map_pixels": s, "layers": len(n), "ms": round(ms, 3)}
                              for s, n, ms in self.candidates]}  # fmt: skip
        if self.standard_ms is not None:
            out["standard_layers"] = list(self.standard)
            out["standard_ms"] = {"kernel_everywhere": round(self.standard_ms[0], 3),
                                  "with_standard_layers": round(self.standard_ms[1], 3)}  # fmt: skip
        return out

    def describe(self) -> str:
        """One line: what runs dense and the measured times."""
        if len(self.candidates) == 1:
            return "no CEPD layers: nothing to run dense"
        base = self.candidates[0][2]
        chosen = next(c for c in self.candidates if c[1] == self.names)
        times = ", ".join(f"{len(n)} dense {ms:.1f} ms" for _, n, ms in self.candidates)
        if not self.names:
            line = f"every CEPD layer runs as CEPD on {self.runtime} (measured: {times})"
        else:
            line = (f"{len(self.names)} CEPD layer(s) on maps of {chosen[0]} pixels and more run "
                    f"dense on {self.runtime}, {base / chosen[2]:.2f}x faster than none (measured: {times})")
        if self.standard_ms is not None:
            a, b = self.standard_ms
            line += (f"; {len(self.standard)} layer(s) left to onnxruntime's own ops (kernel everywhere "
                     f"{a:.1f} ms, with them left {b:.1f} ms)")  # fmt: skip
        return line


def stages(plan: Plan) -> list[tuple[int, tuple[str, ...]]]:
    """(output map pixels s, the CEPD layers writing maps of at least s pixels), for each map size
    s of the Plan's CEPD layers, largest first; preceded by (0, ()) for running none dense."""
    size = {name: math.prod(info.out_shape[2:]) for name, info in plan.layers.items() if info.kind == "cepd"}
    out = [(0, ())]
    for s in sorted(set(size.values()), reverse=True):
        out.append((s, tuple(n for n in size if size[n] >= s)))
    return out


def dense_stages(
    model: nn.Module,
    input_shape: Sequence[int],
    runtime: str = "onnxruntime-native",
    *,
    threads: int = 2,
    rounds: int = 30,
    margin: float = 0.02,
    progress: bool = True,
) -> DenseStages:
    """Time every stage candidate of ``model`` on ``runtime`` (see the module docstring)."""
    if runtime not in RUNTIMES:
        raise CEPDError(f"dense stages are measured on {' or '.join(RUNTIMES)}, not {runtime!r}")
    fused = runtime == "onnxruntime-native"
    if fused:
        from cepd_deploy.targets.onnx import ort_library

        if not ort_library.available():
            raise CEPDError("the custom-op library is not built here: cannot time the fused export on it")
    plan = lower(model, input_shape)
    cands = stages(plan)
    if len(cands) == 1:
        return DenseStages(runtime, (), ((0, (), 0.0),), plan)
    bar = tqdm(cands, desc="dense stages: build", disable=not progress, unit="model")
    plans = [lower(model, input_shape, dense=names) if names else plan for _, names in bar]
    with tempfile.TemporaryDirectory(prefix="cepd-stages-") as tmp:
        runs = [_session(p, fused, threads, tmp) for p in plans]
        times = node_times(runs, plan.input_shape, rounds, progress=progress, desc="dense stages: time")
        ms = [sum(t.values()) for t in times]  # per-node 10th percentiles, summed
    best = 0
    for k in range(1, len(cands)):
        if ms[k] < ms[best] * (1 - margin):
            best = k
    measured = tuple((s, names, t) for (s, names), t in zip(cands, ms))
    chosen = DenseStages(runtime, cands[best][1], measured, plans[best])
    if not fused:
        return chosen
    names, both = standard_layers(plans[best], threads=threads, rounds=rounds, margin=margin,
                                  progress=progress)  # fmt: skip
    return dataclasses.replace(chosen, standard=names, standard_ms=both)


def standard_layers(plan: Plan, *, threads: int = 2, rounds: int = 30, margin: float = 0.02,
                    progress: bool = True) -> tuple[tuple[str, ...], tuple[float, float]]:  # fmt: skip
    """The layers of ``plan``'s fused export that the custom-op library should leave to
    onnxruntime's own ops (see the module docstring), and (ms with the kernel on every layer it
    runs, ms with the chosen ones left to onnxruntime); () if leaving them was not faster."""
    import onnx

    from cepd_deploy.targets.onnx import build_session, ort_library, prepare, to_model
    from cepd_deploy.targets.onnx.profile import layer_times, node_layer

    fused = to_model(prepare(plan), fused=True)
    layer_of = node_layer(plan)
    native = ort_library.native_model(fused)
    on_kernel = {layer_of(n.name) for n in native.graph.node if ort_library.is_native(n)}

    def timed(models: list, native: list, desc: str) -> list[dict[str, float]]:
        with tempfile.TemporaryDirectory(prefix="cepd-standard-") as tmp:
            runs = [build_session(m, threads, native="library" if k else False, profile=tmp)
                    for m, k in zip(models, native)]  # fmt: skip
            return node_times(runs, plan.input_shape, rounds, progress=progress, desc=desc)

    times = timed([fused, fused], [True, False], "standard layers: time")
    kernel, standard = (layer_times(plan, t) for t in times)
    cut = 1 - LAYER_MARGIN
    names = tuple(sorted(n for n in on_kernel if n in standard and standard[n] < kernel.get(n, 0) * cut))
    if not names:
        return (), (sum(kernel.values()),) * 2
    mixed = onnx.ModelProto()
    mixed.CopyFrom(fused)
    ort_library.mark_standard(mixed, names)
    a, b = (sum(t.values()) for t in timed([fused, mixed], [True, True], "standard layers: check"))
    return (names if b < a * (1 - margin) else ()), (a, b)


def _session(plan: Plan, fused: bool, threads: int, profile_dir: str):
    from cepd_deploy.targets.onnx import build_session, prepare, to_model

    model = to_model(prepare(plan), fused=fused)
    return build_session(model, threads, native="library" if fused else False, profile=profile_dir)
