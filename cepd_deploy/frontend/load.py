"""``load_plan``: a model argument of any kind -> its Plan, for every command.

>>> loaded = load_plan("resnet20")                      # doctest: +SKIP
>>> loaded.plan.input_shape, loaded.label               # doctest: +SKIP
((1, 3, 32, 32), 'resnet20')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import Plan


@dataclass(frozen=True)
class Loaded:
    """A Plan with the label outputs are named by and, unless a Plan was given, the torch model
    it was lowered from (the reference a build can be checked against)."""

    plan: Plan
    label: str
    model: Any = None


def load_plan(
    source: Any,
    input_shape: Sequence[int] | None = None,
    batch: int = 1,
    *,
    model_args: dict | None = None,
    template: str | None = None,
    trust_code: bool = False,
) -> Loaded:
    """The Plan of ``source`` for ``batch`` images.

    ``source``: a :class:`Plan` (used as it is), an ``nn.Module`` (lowered; its recorded input
    shape, else ``input_shape``), a path to a CEPD model file, a zoo name, or a network reference
    ``MODULE:ATTR`` (built with ``model_args``). ``input_shape`` is (C, H, W) or (N, C, H, W) (N is
    ignored: ``batch`` sets it). ``template`` and ``trust_code``: how a model file's network is
    built (see :func:`cepd_deploy.model.format.resolve`).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise CEPDError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(source, Plan):
        return Loaded(source, "plan")
    from cepd_deploy.frontend.lower import lower

    if isinstance(source, (str, os.PathLike)):
        from cepd_deploy.model.format import resolve

        model, shape, label = resolve(os.fspath(source), input_shape, model_args=model_args,
                                      template=template, trust_code=trust_code)  # fmt: skip
    else:
        from torch import nn

        if not isinstance(source, nn.Module):
            raise CEPDError(f"cannot load a Plan from a {type(source).__name__}")
        model, label = source, (getattr(source, "cepd_arch", None) or {}).get("name") or type(source).__name__
        shape = _shape_of(model, input_shape)
    return Loaded(lower(model.eval(), (batch, *shape[-3:])), label, model)


def _shape_of(model, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    shape = input_shape or getattr(model, "cepd_input_shape", None)
    arch = (getattr(model, "cepd_arch", None) or {}).get("name")
    if shape is None and arch:
        from cepd_deploy.model.zoo import input_shape as zoo_shape

        shape = zoo_shape(arch)
    if shape is None:
        raise CEPDError("give input_shape (C, H, W): the model records none")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise CEPDError(f"input shape must be (C, H, W), got {shape}")
    return shape
