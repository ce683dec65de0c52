"""Targets: one package per backend, each consuming the Plan. Imported lazily (heavy deps).

Each target package exposes ``TARGET``, a :class:`TargetInfo`, and its own entry points
(``render``/``run``/``simulate``/``estimate``). ``get(name)`` imports one by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from cepd_deploy.errors import CEPDError

#: target name -> module path
REGISTRY = {
    "onnxruntime": "cepd_deploy.targets.onnx",
    "tvm": "cepd_deploy.targets.tvm",
    "pynq-z1": "cepd_deploy.targets.pynq_z1",
    "eyeriss": "cepd_deploy.targets.eyeriss",
}


@dataclass(frozen=True)
class TargetInfo:
    """What a target is: its name, what it produces, and the Plan ops it cannot run."""

    name: str
    kind: str  # "runtime" (measured), "fpga" or "asic" (modelled)
    handlers: dict = field(default_factory=dict)  # Op -> handler
    unsupported: frozenset = frozenset()


def get(name: str) -> ModuleType:
    """The target package called ``name``; an unknown or unavailable name lists the valid ones."""
    if name not in REGISTRY:
        raise CEPDError(f"unknown target {name!r}; valid targets: {', '.join(REGISTRY)}")
    try:
        return importlib.import_module(REGISTRY[name])
    except ModuleNotFoundError as exc:
        raise CEPDError(f"target {name!r} is not available: missing module {exc.name!r}") from None
