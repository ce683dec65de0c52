"""Targets: one package per backend, each a :class:`~cepd_deploy.targets.base.Target` consuming
the Plan. The registry below is the only list of them: the commands, ``bench`` and ``demo`` loop
over it, so a new target is one new package plus one line here.

>>> from cepd_deploy import targets
>>> [t.name for t in targets.all_targets() if t.can("estimate")]      # doctest: +SKIP
['pynq-z1', 'eyeriss']
"""

from __future__ import annotations

import importlib

from cepd_deploy.errors import CEPDError
from cepd_deploy.targets.base import Kind, Target

#: target name -> "module:class" of its Target (modules that import nothing heavy at the top)
REGISTRY: dict[str, str] = {
    "onnxruntime": "cepd_deploy.targets.onnx.target:Portable",
    "onnxruntime-fused": "cepd_deploy.targets.onnx.target:Fused",
    "onnxruntime-native": "cepd_deploy.targets.onnx.target:Native",
    "tvm": "cepd_deploy.targets.tvm.target:TVM",
    "cuda": "cepd_deploy.targets.tvm.target:TVMCuda",
    "torch": "cepd_deploy.targets.torch.target:Torch",
    "pynq-z1": "cepd_deploy.targets.pynq_z1.target:PynqZ1",
    "eyeriss": "cepd_deploy.targets.eyeriss.target:Eyeriss",
}
#: other names users type for a target
ALIASES = {"llvm": "tvm"}

_loaded: dict[str, Target] = {}

def get(name: str) -> Target:
    """The target called ``name`` (or an alias of it); an unknown name lists the valid ones."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise CEPDError(f"unknown target {name!r}; targets: {', '.join(REGISTRY)}")
    if key not in _loaded:
        module, cls = REGISTRY[key].split(":")
        _loaded[key] = getattr(importlib.import_module(module), cls)()
    return _loaded[key]


def register(name: str, target: str | Target) -> None:
    """Add a target at run time (a plug-in, or a test's toy target): a "module:class" path or an
    instance."""
    if isinstance(target, Target):
        REGISTRY[name] = f"{type(target).__module__}:{type(target).__qualname__}"
        _loaded[name] = target
    else:
        REGISTRY[name] = target
        _loaded.pop(name, None)


def all_targets() -> list[Target]:
    """Every registered target, in registry order (each loaded on first use)."""
    return [get(name) for name in REGISTRY]


def names(verb: str | None = None) -> list[str]:
    """Target names, or those that implement ``verb`` (``build``, ``estimate``, ``runner``)."""
    return [t.name for t in all_targets() if verb is None or t.can(verb)]


__all__ = ["ALIASES", "REGISTRY", "Kind", "Target", "all_targets", "get", "names", "register"]
