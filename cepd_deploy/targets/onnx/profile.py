"""Node and layer times of whole-model onnxruntime runs, from onnxruntime's profiler.

Sessions built with ``build_session(..., profile=folder)`` record every node's kernel time.
:func:`node_times` runs several such sessions interleaved and gives each node's 10th percentile:
steadier on a shared machine than whole runs, since a burst of other work slows a few nodes of a
run and a node's low percentile drops it. :func:`layer_times` sums them per layer of the Plan the
model was exported from.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cepd_deploy.plan.ir import Plan

SUFFIX = "_kernel_time"  # onnxruntime's profile event of a node's kernel
INLINED = re.compile(r"^_inlfunc_[A-Za-z0-9]+_(?:token_\d+_)?")  # a function body's nodes, inlined


def node_times(sessions: list, shape: tuple[int, ...], rounds: int, *, progress: bool = False,
               desc: str = "time") -> list[dict[str, float]]:  # fmt: skip
    """Run ``sessions`` (profiling, one input of ``shape``) in ``rounds`` interleaved rounds; per
    session, node name -> the 10th percentile of its kernel time over the rounds (ms). Ends the
    sessions' profiling and removes the profile files."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for _ in tqdm(range(rounds), desc=desc, disable=not progress, unit="round"):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    out = []
    for sess in sessions:
        path = Path(sess.end_profiling())
        per: dict[str, list[float]] = defaultdict(list)
        for event in json.loads(path.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith(SUFFIX):
                per[event["name"][: -len(SUFFIX)]].append(event["dur"] / 1e3)
        path.unlink(missing_ok=True)
        out.append({name: float(np.percentile(v, 10)) for name, v in per.items()})
    return out


def node_layer(plan: Plan) -> Callable[[str], str | None]:
    """``layer(name)``: the layer of ``plan`` an ONNX node (or its profile entry) belongs to, or
    None. The exporters name an ONNX node ``<Plan node or value>/<op>``; onnxruntime names a node it
    fuses after its output value, appends ``_nchwc`` to one it moves to its blocked layout and
    prefixes the nodes of a function body it inlines (``_inlfunc_<op>_[token_<n>_]``)."""
    by_name = {n.name: n.layer for n in plan.nodes if n.layer}
    by_value = {n.output: n.layer for n in plan.nodes if n.layer}

    def layer(name: str) -> str | None:
        head = INLINED.sub("", name).split("/", 1)[0].removesuffix("_nchwc")
        return by_name.get(head) or by_value.get(head)

    return layer


def layer_times(plan: Plan, times: dict[str, float]) -> dict[str, float]:
    """``times`` (node name -> ms) summed per layer of ``plan`` (:func:`node_layer`); nodes of no
    layer (onnxruntime's layout reorders) are left out."""
    layer_of = node_layer(plan)
    out: dict[str, float] = defaultdict(float)
    for name, t in times.items():
        layer = layer_of(name)
        if layer:
            out[layer] += t
    return dict(out)
