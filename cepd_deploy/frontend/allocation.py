"""Rank allocations for ``convert``, and the measured onnxruntime latency of single layers that a
latency-aware allocation minimises.

``convert(..., latency=OrtLatency())`` asks, for every convertible conv and every candidate
ranks (or dense), how long that layer alone takes on this machine: a one-layer model (the conv
and its activation, random weights) exported exactly as the whole model will be (same rewrites,
same scatter forms) and timed in onnxruntime with the benchmark's settings (intra-op threads,
no spinning): all options in interleaved passes, the least pass median kept.
Results are cached per machine, onnxruntime version, thread count and exporter source (a change
to how layers are emitted or measured measures again) in ``$CEPD_DEPLOY_CACHE/onnx-latency-<key>.json``,
so a second conversion of the same architecture measures nothing.

Single layers are not whole models: inside a network a layer's input arrives from the layer
before (in onnxruntime's blocked layout or not, hot or cold), and a probe pays layout reorders a
model does not. So ``convert`` allocates twice (:meth:`OrtLatency.in_model`): the first
allocation is built and run whole, node by node, and every option of a layer is scaled by how its
chosen option's in-model time compared with its probe's, before the second allocation. Measured
on ResNet-50 at 46.1% FLOPs on the custom-op library (AVX2, 2 threads), in-model times were
0.4-1.2x the probes' for dense layers and 0.7-1.3x for CEPD ones, and the second allocation ran
1.05x faster than the first (side by side in one process); a third gained nothing more.

:class:`LibraryLatency` times the same probes on the custom-op library (the fused export with
``TTSparseConv`` in C++), for models deployed that way; it keeps the first stage dense (see there).

>>> lat = OrtLatency(threads=2)                                    # doctest: +SKIP
>>> convert(model, flops_remaining=0.461, latency=lat, rank_multiple=16)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.cache import cache_root, discard, ensure_dir, figure, notice
from cepd_deploy.errors import CEPDError
from cepd_deploy.files import atomic_write
from cepd_deploy.names import ALLOCATIONS  # the allocations ``convert`` offers (re-exported)

#: The allocations' short tags in model labels and file names.
TAGS = {"uniform": "", "ort-latency": "lat", "library-latency": "lib"}
ROUNDS = 5  # measuring passes over all options (see OrtLatency._measure)


def allocation_kwargs(allocation: str, threads: int = 2, progress: bool = True) -> dict:
    """``convert`` keyword arguments for an allocation name: none for "uniform"; for
    "ort-latency" / "library-latency" an :class:`OrtLatency` / :class:`LibraryLatency` at
    ``threads`` threads (with progress bars unless ``progress`` is False) and ranks in multiples
    of onnxruntime's channel block."""
    if allocation == "uniform":
        return {}
    if allocation in ("ort-latency", "library-latency"):
        from cepd_deploy.targets.onnx.portable import CHANNEL_BLOCK

        cls = OrtLatency if allocation == "ort-latency" else LibraryLatency
        return dict(latency=cls(threads=threads, progress=progress), rank_multiple=CHANNEL_BLOCK)
    raise CEPDError(f"unknown allocation {allocation!r}: {' or '.join(ALLOCATIONS)}")


class _Probe(nn.Module):
    def __init__(self, conv: nn.Module, act: str | None) -> None:
        super().__init__()
        self.conv, self.act = conv, act

    def forward(self, x):
        y = self.conv(x)
        if self.act == "relu":
            y = F.relu(y)
        elif self.act == "relu6":
            y = F.relu6(y)
        return y


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _source_digest() -> str:
    from cepd_deploy.native import layer as kernel_layer
    from cepd_deploy.plan import passes
    from cepd_deploy.targets.onnx import exporter, fused, portable, target

    modules = (portable, fused, exporter, target, kernel_layer, passes)
    files = [Path(m.__file__) for m in modules] + [Path(__file__)]
    sources = "".join(f.read_text() for f in files)
    return hashlib.sha256(sources.encode()).hexdigest()[:16]


def _read_table(path: Path) -> dict[str, float]:
    """A latency cache file's entries (option key -> ms). Entries that are not a finite positive
    number of milliseconds under a key of the right form are dropped (measured again), with a
    notice; a file that is not such a JSON object is discarded."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        discard(path, f"not JSON: {type(exc).__name__}", "latency cache")
        return {}
    if not isinstance(data, dict):
        discard(path, f"a JSON {type(data).__name__}, not an object", "latency cache")
        return {}
    table = {k: float(v) for k, v in data.items() if figure(v, positive=True) and _key_ok(k)}
    if len(table) < len(data):
        notice(f"dropped {len(data) - len(table)} damaged entries of the latency cache {path} (not a "
               "finite positive time); they are measured again")  # fmt: skip
    return table


def _key_ok(key: str) -> bool:
    """Whether a cache key is a JSON ``[probe fields, ranks or null]`` (as :meth:`OrtLatency.many` makes)."""
    try:
        k = json.loads(key)
    except ValueError:
        return False
    return (isinstance(k, list) and len(k) == 2 and isinstance(k[0], list)
            and (k[1] is None or isinstance(k[1], list)))  # fmt: skip


class OrtLatency:
    """Callable ``(probe, ranks | None) -> ms``: one layer's median onnxruntime latency.

    ``probe`` is a :class:`cepd_deploy.frontend.convert.LayerProbe`; ``ranks`` None means dense.
    Measuring shows progress bars on stderr (a minute for ResNet-50's ~200 options on 2 cores),
    terminal or not, unless ``progress`` is False.
    """

    name = "onnx-latency"  # the cache file's prefix

    def __init__(self, threads: int = 2, repeats: int = 25, cache: Path | None = None,
                 progress: bool = True) -> None:  # fmt: skip
        import onnxruntime as ort

        self.threads, self.repeats, self.progress = int(threads), int(repeats), progress
        key = json.dumps([_cpu_name(), ort.__version__, self.threads, os.cpu_count(), _source_digest(),
                          *self._runtime_key()])  # fmt: skip
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        self.path = cache or cache_root() / f"{self.name}-{digest}.json"
        self.table: dict[str, float] = _read_table(self.path)
        self.measured = 0

    def __call__(self, probe, ranks: tuple[int, ...] | None) -> float:
        return self.many([(probe, ranks)])[0]

    def _runtime_key(self) -> list:
        """What else the measurements depend on (part of the cache key)."""
        return []

    def _session(self, plan, profile: str | None = None):
        from cepd_deploy.targets.onnx import build_session, prepare, to_model

        return build_session(to_model(prepare(plan)), self.threads, profile=profile)

    def many(self, options: list[tuple]) -> list[float]:
        """Latencies of ``(probe, ranks)`` pairs for an allocation (see :meth:`times`)."""
        return self.times(options)

    def in_model(self, model: nn.Module, input_shape, chosen: dict[str, tuple],
                 rounds: int = 20) -> Callable[[object, tuple | None], float]:  # fmt: skip
        """``scale(probe, ranks)``: how an option's time inside a whole model compares with its
        probe's. ``model`` (an allocation from this table) is exported as the probes are and run
        ``rounds`` times, node by node (the nodes' 10th percentiles, summed per layer); each layer
        of ``chosen`` (name -> (probe, ranks or None for dense)) gives its in-model time over this
        table's time for that option. ``scale`` answers the mean ratio of the layers with that
        probe and kind (CEPD or dense), else the median ratio of that kind (1 if none was timed)."""
        from cepd_deploy.frontend.lower import lower
        from cepd_deploy.targets.onnx.profile import layer_times, node_times

        plan = lower(model, input_shape)
        with tempfile.TemporaryDirectory(prefix="cepd-latency-") as tmp:
            sess = self._session(plan, profile=tmp)
            desc = "latency: time the allocation whole"
            times = layer_times(plan, node_times([sess], plan.input_shape, rounds, progress=self.progress,
                                                 desc=desc)[0])  # fmt: skip
        ratios: dict[bool, dict[object, list[float]]] = {True: {}, False: {}}  # dense? -> probe -> ratios
        for (name, (probe, ranks)), probe_ms in zip(chosen.items(), self.times(list(chosen.values()))):
            if times.get(name) and math.isfinite(probe_ms):
                ratios[ranks is None].setdefault(probe, []).append(times[name] / probe_ms)
        mean = {kind: {p: statistics.fmean(v) for p, v in r.items()} for kind, r in ratios.items()}
        typical = {kind: statistics.median(m.values()) if m else 1.0 for kind, m in mean.items()}
        return lambda probe, ranks: mean[ranks is None].get(probe, typical[ranks is None])

    def times(self, options: list[tuple]) -> list[float]:
        """Measured latencies of ``(probe, ranks)`` pairs; the ones not in the cache are measured
        together (see :meth:`_measure`), with a progress bar."""
        keys = [json.dumps([dataclasses.astuple(p), r]) for p, r in options]
        todo = {k: v for k, v in zip(keys, options) if k not in self.table}
        if todo:
            self.table.update(zip(todo, self._measure(list(todo.values()))))
            self.measured += len(todo)
        return [self.table[k] for k in keys]

    def save(self) -> None:
        """Write the cache (atomically; temporary files of killed runs are swept)."""
        from cepd_deploy.ownership import sweep_stale

        ensure_dir(self.path.parent)
        sweep_stale(self.path.parent, rf"\.{re.escape(self.path.name)}\.[0-9a-z_]{{8}}\.tmp")
        atomic_write(self.path, json.dumps(self.table, indent=0, sort_keys=True))

    def _measure(self, options: list[tuple]) -> list[float]:
        """Median ms per option: every option gets a session first, then ``ROUNDS`` passes over
        all of them, ``repeats / ROUNDS`` runs each per pass; the least pass median is kept. Load
        from elsewhere on the machine comes and goes over seconds: a pass that it slowed is
        dropped, and it cannot favour one option over another."""
        from tqdm import tqdm

        from cepd_deploy.frontend.lower import lower

        runs = []
        for probe, ranks in tqdm(options, desc="latency: build layer options", unit="option", mininterval=1.0,
                                 disable=not self.progress):  # fmt: skip
            shape = (1, *probe.in_shape[1:])
            plan = lower(_Probe(_probe_conv(probe, ranks), probe.act).eval(), shape)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            runs.append((self._session(plan), {plan.input: x}))
        per_pass = max(1, self.repeats // ROUNDS)
        best = [math.inf] * len(runs)
        bar = tqdm(total=ROUNDS * len(runs), desc=f"latency: time them ({ROUNDS} passes)", unit="option",
                   mininterval=1.0, disable=not self.progress)  # fmt: skip
        for _ in range(ROUNDS):
            for i, (sess, feed) in enumerate(runs):
                sess.run(None, feed)  # warm this option's buffers after the others ran
                times = []
                for _ in range(per_pass):
                    t = time.perf_counter()
                    sess.run(None, feed)
                    times.append(time.perf_counter() - t)
                best[i] = min(best[i], statistics.median(times) * 1e3)
                bar.update()
        bar.close()
        return best


class LibraryLatency(OrtLatency):
    """:class:`OrtLatency` on the custom-op library: each probe is the fused export run with
    ``TTSparseConv`` in C++ (a dense probe runs onnxruntime's conv); the cache key adds the
    library file's digest, so a rebuilt kernel is measured again.

    The first stage stays dense: :meth:`many` reports no CEPD option for a conv whose output map is
    as large as the largest input map among the options it is asked about (the stem's output;
    ResNet-50: layer1 and layer2.0.conv1, 56x56). Measured in whole ResNet-50 runs, such layers took
    1.6-2x their single-layer time when compressed: their 3.2 MB outputs and residuals arrive cold
    from the previous layer (a probe runs hot), and each one between onnxruntime's dense convs adds
    layout reorders and moves data between cores. Allocations from these tables that compressed them
    were 9-13% slower than ``OrtLatency``'s at 37.1% FLOPs; keeping them dense, 5% / 3-4% faster at
    66.3% / 46.1% and equal at 37.1% (whole models side by side in one process).
    """

    name = "library-latency"

    def __init__(self, threads: int = 2, repeats: int = 25, cache: Path | None = None,
                 progress: bool = True) -> None:  # fmt: skip
        from cepd_deploy.targets.onnx import ort_library

        if not ort_library.available():
            raise CEPDError("library-latency needs the custom-op library, which is not built here "
                            "(use ort-latency)")  # fmt: skip
        super().__init__(threads, repeats, cache, progress)

    def __call__(self, probe, ranks: tuple[int, ...] | None) -> float:
        return super().many([(probe, ranks)])[0]  # one probe: no stage to speak of

    def many(self, options: list[tuple]) -> list[float]:
        """Latencies of ``(probe, ranks)`` pairs; the first stage is read off the options asked
        together (``convert`` asks for a whole model's at once)."""
        from cepd_deploy.plan.ir import conv_out_hw

        def out_pixels(p) -> int:
            h, w = conv_out_hw(p.in_shape[2:], p.kernel, p.stride, p.padding, p.dilation)
            return h * w

        top = max((p.in_shape[2] * p.in_shape[3] for p, _ in options), default=0)
        first = [r is not None and out_pixels(p) >= top for p, r in options]
        timed = iter(self.times([o for o, f in zip(options, first) if not f]))
        return [math.inf if f else next(timed) for f in first]

    def _runtime_key(self) -> list:
        from cepd_deploy.targets.onnx import ort_library

        return [hashlib.sha256(Path(ort_library.get_library_path()).read_bytes()).hexdigest()[:16]]

    def _session(self, plan, profile: str | None = None):
        from cepd_deploy.targets.onnx import build_session, prepare, to_model

        model = to_model(prepare(plan), fused=True)
        return build_session(model, self.threads, native="library", profile=profile)


def _probe_conv(probe, ranks: tuple[int, ...] | None) -> nn.Module:
    """The probe's conv (dense when ``ranks`` is None) with random weights, S spread out."""
    from cepd_deploy.model.layers import CEPDConv2d

    gen = torch.Generator().manual_seed(0)
    if ranks is None:
        conv = nn.Conv2d(probe.in_channels, probe.out_channels, probe.kernel, probe.stride,
                         probe.padding, probe.dilation, bias=True)  # fmt: skip
    else:
        conv = CEPDConv2d(probe.in_channels, probe.out_channels, probe.kernel, ranks=ranks,
                          kappa=probe.kappa, layout=probe.layout, stride=probe.stride,
                          padding=probe.padding, dilation=probe.dilation)  # fmt: skip
        if probe.kappa:  # kept filters spread over the channels, as a trained S has them
            perm = torch.randperm(probe.out_channels, generator=gen)[: probe.kappa]
            conv.s_index.copy_(perm.sort().values)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return conv
