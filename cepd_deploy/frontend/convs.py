"""What a conv module computes: weights, stride, dilation, groups and its effective zero padding.

Covers ``nn.Conv2d`` with numeric, ``'same'`` or ``'valid'`` padding, and any subclass whose own
``forward`` pads its input and then calls ``F.conv2d`` on its weight (e.g. the "static same
padding" convs of EfficientNet ports): such a conv is still one conv, with that padding.

>>> conv_form(nn.Conv2d(4, 8, 4, padding="same")).pads     # doctest: +SKIP
(1, 2, 1, 2)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from cepd_deploy.errors import CEPDError

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]  # top, bottom, left, right


def pair(v) -> Pair:
    """An int or a pair as a pair of ints."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


@dataclass(frozen=True)
class ConvForm:
    """One 2-D conv: ``conv2d(zero_pad(x, pads), weight, bias, stride, 0, dilation, groups)``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: Pair
    dilation: Pair
    groups: int
    pads: Pads

    @property
    def padding(self) -> Pair:
        """The symmetric part of the padding (what a conv's own ``padding`` can say)."""
        top, bottom, left, right = self.pads
        return (min(top, bottom), min(left, right))

    @property
    def extra(self) -> Pads:
        """The padding left over after :attr:`padding`: zeros on one side only, or none."""
        (ph, pw), (top, bottom, left, right) = self.padding, self.pads
        return (top - ph, bottom - ph, left - pw, right - pw)

    @property
    def symmetric(self) -> bool:
        return not any(self.extra)


def conv_form(conv: nn.Conv2d) -> ConvForm:
    """The :class:`ConvForm` of a conv module (a one-line error for what it cannot describe)."""
    kind = type(conv).__name__
    if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
        return _subclass_form(conv)
    if conv.padding_mode != "zeros":
        raise CEPDError(f"{kind} with padding_mode={conv.padding_mode!r}: only zero padding is supported")
    weight, bias = conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None
    return ConvForm(weight, bias, pair(conv.stride), pair(conv.dilation), conv.groups,
                    _pads(conv.padding, conv.kernel_size, conv.dilation))  # fmt: skip


def _pads(padding, kernel, dilation) -> Pads:
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":  # torch puts the odd zero on the bottom/right
        out = []
        for k, d in zip(pair(kernel), pair(dilation)):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _subclass_form(conv: nn.Conv2d) -> ConvForm:
    """Read a subclass's forward: an optional zero pad, then ``F.conv2d`` on its own weight."""
    kind = type(conv).__name__
    try:
        graph = fx.Tracer().trace(conv)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CEPDError(f"{kind}: cannot read its forward with torch.fx ({msg})") from None
    pads: Pads = (0, 0, 0, 0)
    form = None
    for n in graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        if n.op == "call_module" and form is None:
            pads = add_pads(pads, _pad_module(conv.get_submodule(n.target), kind))
        elif n.op == "call_function" and n.target is F.pad and form is None:
            pads = add_pads(pads, _pad_call(n, kind))
        elif n.op == "call_function" and n.target is F.conv2d and form is None:
            form = _conv_call(conv, n, kind)
        elif n.op == "call_function" and n.target is operator.getitem:
            continue
        else:
            raise CEPDError(f"{kind}: its forward does more than pad and convolve ({n.op} {n.target})")
    if form is None:
        raise CEPDError(f"{kind}: its forward calls no F.conv2d")
    pads = add_pads(pads, form.pads)
    return ConvForm(form.weight, form.bias, form.stride, form.dilation, form.groups, pads)


def add_pads(a: Pads, b: Pads) -> Pads:
    """Two paddings (top, bottom, left, right) applied one after the other."""
    return tuple(x + y for x, y in zip(a, b))


def pad_module_pads(mod: nn.Module) -> Pads | None:
    """(top, bottom, left, right) of a zero-padding module (``ZeroPad2d``, ``ConstantPad2d(0)``,
    ``Identity``); None for any other module."""
    if isinstance(mod, nn.Identity):
        return (0, 0, 0, 0)
    if isinstance(mod, (nn.ZeroPad2d, nn.ConstantPad2d)) and getattr(mod, "value", 0) == 0:
        left, right, top, bottom = (int(p) for p in mod.padding)
        return (top, bottom, left, right)
    return None


def _pad_module(mod: nn.Module, kind: str) -> Pads:
    pads = pad_module_pads(mod)
    if pads is None:
        raise CEPDError(f"{kind}: its forward applies {type(mod).__name__}, not a zero pad")
    return pads


def pad_call_pads(args: tuple, kwargs: dict) -> Pads | str:
    """The pads of an ``F.pad(x, pad, mode, value)`` call on an image, or why it is not a zero pad."""
    pad = args[1] if len(args) > 1 else kwargs.get("pad")
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value", None)
    if mode != "constant" or value not in (None, 0, 0.0):
        return f"F.pad with mode={mode!r} value={value!r} (only zero padding is supported)"
    if (
        not isinstance(pad, (tuple, list))
        or len(pad) not in (2, 4)
        or any(not isinstance(p, int) for p in pad)
    ):
        return f"F.pad with pad={pad!r} (expected 2 or 4 static ints on the image dims)"
    left, right, top, bottom = (*pad, 0, 0) if len(pad) == 2 else pad
    if min(left, right, top, bottom) < 0:
        return "F.pad with negative pads (cropping) is not supported"
    return (top, bottom, left, right)


def _pad_call(n: fx.Node, kind: str) -> Pads:
    pads = pad_call_pads(n.args, n.kwargs)
    if isinstance(pads, str):
        raise CEPDError(f"{kind}: {pads}")
    return pads


def _conv_call(conv: nn.Conv2d, n: fx.Node, kind: str) -> ConvForm:
    args = dict(_CONV_DEFAULTS)
    args.update(zip(_CONV_ARGS, n.args))
    args.update(n.kwargs)
    w, b = args["weight"], args["bias"]
    if not (isinstance(w, fx.Node) and w.op == "get_attr" and w.target == "weight"):
        raise CEPDError(f"{kind}: F.conv2d is not called on the module's own weight")
    if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr" and b.target == "bias"):
        raise CEPDError(f"{kind}: F.conv2d is not called with the module's own bias")
    bias = conv.bias.detach() if b is not None and conv.bias is not None else None
    pads = _pads(args["padding"], conv.kernel_size, args["dilation"])
    return ConvForm(conv.weight.detach(), bias, pair(args["stride"]), pair(args["dilation"]),
                    int(args["groups"]), pads)  # fmt: skip
