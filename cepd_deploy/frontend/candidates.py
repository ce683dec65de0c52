"""Which layers ``convert`` may turn into CEPD convs, and why each other conv stays dense.

A candidate is described by the conv it computes (:class:`Candidate`), whatever the model's
code wrote: an ``nn.Conv2d`` with numeric or ``'same'`` padding, a conv subclass with its own
padding, or an ``nn.Linear`` applied to channels-last (N, H, W, C) tensors (the pointwise
layers of ConvNeXt-style blocks, a 1x1 conv over the channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.convs import conv_form
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.plan.ir import Op, Plan

Pair = tuple[int, int]

#: Why a conv stays dense, by short key (``inspect`` prints the text).
REASONS = {
    "first": "the first conv (it sees the image; pass convert_first to convert it)",
    "grouped": "grouped or depthwise conv (CEPD factors the full channel mixing only)",
    "asymmetric": "padding that differs between sides (no CEPD layer pads that way)",
    "pooled": "runs on a pooled 1x1 map (squeeze-excitation or head: negligible MACs); name it in "
    "a config to convert it",
    "functional": "a functional conv (F.conv2d on a parameter), not a module convert can replace",
    "allocation": "the allocation kept it dense (no rank is cheaper than dense at this target)",
}


@dataclass(frozen=True)
class Candidate:
    """A layer as the conv it computes (conv-like fields, so allocation reads it as a conv)."""

    weight: torch.Tensor  # (O, I, kh, kw)
    bias: torch.Tensor | None
    stride: Pair
    padding: Pair
    dilation: Pair
    channels_last: bool = False

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel_size(self) -> Pair:
        return tuple(self.weight.shape[2:])

    def cepd(self, ranks, kappa: int, layout: str) -> CEPDConv2d:
        """The CEPD layer replacing it (direct method: TT-SVD, then the kappa largest filters)."""
        layer = CEPDConv2d(self.in_channels, self.out_channels, self.kernel_size, ranks=ranks, kappa=kappa,
                           layout=layout, stride=self.stride, padding=self.padding, dilation=self.dilation,
                           bias=self.bias is not None, channels_last=self.channels_last)  # fmt: skip
        layer.set_weights(self.weight, self.bias)
        return layer


def candidates(
    model: nn.Module, dense: Plan, convert_first: bool
) -> tuple[dict[str, Candidate], dict[str, str]]:
    """(layers convert may replace, in execution order; reason keys for the convs it may not).

    ``dense`` is the model's Plan. Convs on a pooled 1x1 map (reason ``pooled``) are converted
    only when a config names them (:func:`pooled_candidate`).
    """
    modules = dict(model.named_modules())
    out: dict[str, Candidate] = {}
    reasons: dict[str, str] = {}
    first = True
    for name, info in dense.layers.items():
        mod = modules.get(name)
        if info.kind == "linear":
            if isinstance(mod, nn.Linear) and len(info.in_shape) == 4 and info.in_shape[2:] != (1, 1):
                out[name] = Candidate(mod.weight.detach()[:, :, None, None],
                                      mod.bias.detach() if mod.bias is not None else None,
                                      (1, 1), (0, 0), (1, 1), channels_last=True)  # fmt: skip
            continue
        if info.kind != "conv":
            continue
        is_first, first = first, False
        reason = _reason(mod, info, is_first and not convert_first, dense)
        if reason:
            reasons[name] = reason
        else:
            out[name] = _candidate(mod)
    return out, reasons


def pooled_candidate(model: nn.Module, name: str) -> Candidate:
    """The candidate of a conv on a pooled map (converted only when a config names it)."""
    return _candidate(model.get_submodule(name))


def _reason(mod, info, is_first: bool, plan: Plan) -> str:
    if not isinstance(mod, nn.Conv2d) or isinstance(mod, CEPDConv2d):
        return "functional"
    if is_first:
        return "first"
    if info.groups != 1:
        return "grouped"
    try:
        form = conv_form(mod)
    except CEPDError:
        return "functional"
    if not form.symmetric:
        return "asymmetric"
    return "pooled" if _on_pooled_map(plan, info.name) else ""


def _on_pooled_map(plan: Plan, layer: str) -> bool:
    """The layer reads a 1x1 map that a global average pool made (through 1x1 ops only):
    squeeze-excitation and pooled heads, not a late stage that is 1x1 because the image is small."""
    producer = plan.producer()
    x = next(n for n in plan.nodes if n.layer == layer).inputs[0]
    while (node := producer.get(x)) is not None:
        if node.out_shape[2:] not in ((1, 1), ()):
            return False
        if any(s[2:] not in ((1, 1), ()) for s in node.in_shapes):
            return node.op is Op.GLOBAL_AVGPOOL
        x = node.inputs[0]
    return False


def _candidate(mod: nn.Conv2d) -> Candidate:
    form = conv_form(mod)
    return Candidate(form.weight, form.bias, form.stride, form.padding, form.dilation)


def why_dense(model: nn.Module, plan: Plan) -> dict[str, str]:
    """For each dense conv of a (converted) model's Plan, the text of why it stayed dense."""
    has_cepd = any(info.kind == "cepd" for info in plan.layers.values())
    modules = dict(model.named_modules())
    out, first = {}, True
    for name, info in plan.layers.items():
        if info.kind not in ("conv", "cepd"):
            continue
        is_first, first = first, False
        if info.kind == "cepd":
            continue
        key = _reason(modules.get(name), info, is_first, plan) or ("allocation" if has_cepd else "")
        if key:
            out[name] = REASONS[key]
    return out
