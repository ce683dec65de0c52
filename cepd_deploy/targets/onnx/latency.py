"""Measured onnxruntime latency of single layers: what a latency-aware rank allocation minimises.

``convert(..., latency=OrtLatency())`` asks, for every convertible conv and every candidate
ranks (or dense), how long that layer alone takes on this machine: a one-layer model (the conv
and its activation, random weights) exported exactly as the whole model will be (same rewrites,
same scatter forms) and timed in onnxruntime with the benchmark's settings (intra-op threads,
no spinning), median of ``repeats`` runs. Results are cached per machine, onnxruntime version,
thread count and exporter source (a change to how layers are emitted measures again) in
``$CEPD_DEPLOY_CACHE/onnx-latency-<key>.json``, so a second conversion of
the same architecture measures nothing.

Not modelled: the residual add of a layer (it adds the same work to every option) and effects
between layers (a layer's input arriving in onnxruntime's blocked layout or not).

>>> lat = OrtLatency(threads=2)                                    # doctest: +SKIP
>>> convert(model, flops_remaining=0.461, latency=lat, rank_multiple=16)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.cache import cache_root
from cepd_deploy.errors import CEPDError

#: Rank allocations ``convert`` offers through the CLI: uniform, or the least onnxruntime latency.
ALLOCATIONS = ("uniform", "ort-latency")


def allocation_kwargs(allocation: str, threads: int = 2) -> dict:
    """``convert`` keyword arguments for an allocation name: none for "uniform"; for
    "ort-latency" an :class:`OrtLatency` at ``threads`` threads and ranks in multiples of
    onnxruntime's channel block."""
    if allocation == "uniform":
        return {}
    if allocation == "ort-latency":
        from cepd_deploy.targets.onnx.portable import CHANNEL_BLOCK

        return dict(latency=OrtLatency(threads=threads), rank_multiple=CHANNEL_BLOCK)
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


def _exporter_digest() -> str:
    from cepd_deploy.plan import rewrite as plan_rewrite
    from cepd_deploy.targets.onnx import fused, portable

    text = "".join(Path(m.__file__).read_text() for m in (portable, fused, plan_rewrite))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OrtLatency:
    """Callable ``(probe, ranks | None) -> ms``: one layer's median onnxruntime latency.

    ``probe`` is a :class:`cepd_deploy.model.convert.LayerProbe`; ``ranks`` None means dense.
    """

    def __init__(self, threads: int = 2, repeats: int = 25, cache: Path | None = None) -> None:
        import onnxruntime as ort

        self.threads, self.repeats = int(threads), int(repeats)
        key = json.dumps([_cpu_name(), ort.__version__, self.threads, os.cpu_count(), _exporter_digest()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        self.path = cache or cache_root() / f"onnx-latency-{digest}.json"
        self.table: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.table = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError):
                self.table = {}  # a damaged cache is measured again
        self.measured = 0

    def __call__(self, probe, ranks: tuple[int, ...] | None) -> float:
        key = json.dumps([dataclasses.astuple(probe), ranks])
        if key not in self.table:
            self.table[key] = self._measure(probe, ranks)
            self.measured += 1
        return self.table[key]

    def save(self) -> None:
        """Write the cache (atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.table, indent=0, sort_keys=True))
        os.replace(tmp, self.path)

    def _measure(self, probe, ranks: tuple[int, ...] | None) -> float:
        from cepd_deploy.model.layers import CEPDConv2d
        from cepd_deploy.plan.lower import lower
        from cepd_deploy.targets.onnx import build_session, to_model

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
        shape = (1, *probe.in_shape[1:])
        plan = lower(_Probe(conv, probe.act).eval(), shape)
        sess = build_session(to_model(plan), self.threads)
        x = {plan.input: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        for _ in range(3):
            sess.run(None, x)
        times = []
        for _ in range(self.repeats):
            t = time.perf_counter()
            sess.run(None, x)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3
