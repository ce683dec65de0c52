"""The many torch spellings of one operation, mapped to the one name the lowering handles.

A model may write an operation as a module (``nn.SiLU()``), a function (``F.silu``,
``torch.sigmoid``), a tensor method (``x.sigmoid()``) or an in-place variant (``x.relu_()``,
``F.relu(x, inplace=True)``); :func:`canonical` gives every fx node the name of its operation
and, for functions and methods, its arguments by name. Adding a spelling is one line here.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

# -- modules: class (or a base class) -> operation --------------------------------------------
MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh", nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.GELU: "gelu",
    nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu",
    nn.BatchNorm2d: "batch_norm", nn.LayerNorm: "layer_norm", nn.Linear: "linear",
    nn.MaxPool2d: "max_pool", nn.AvgPool2d: "avg_pool", nn.AdaptiveAvgPool2d: "adaptive_avg_pool",
    nn.AdaptiveMaxPool2d: "adaptive_max_pool", nn.Flatten: "flatten",
    nn.ZeroPad2d: "pad", nn.ConstantPad2d: "pad", nn.Upsample: "interpolate",
    nn.Dropout: "identity", nn.Dropout2d: "identity", nn.Identity: "identity",
}  # fmt: skip

# -- functions and methods: -> (operation, argument names in positional order) ----------------
_X = ("input",)
FUNCTIONS: dict[object, tuple[str, tuple[str, ...]]] = {
    F.relu: ("relu", _X), torch.relu: ("relu", _X), torch.relu_: ("relu", _X), F.relu_: ("relu", _X),
    F.relu6: ("relu6", _X), F.hardtanh: ("hardtanh", (*_X, "min_val", "max_val")),
    torch.sigmoid: ("sigmoid", _X), F.sigmoid: ("sigmoid", _X), F.hardsigmoid: ("hardsigmoid", _X),
    F.silu: ("silu", _X), F.hardswish: ("hardswish", _X), F.gelu: ("gelu", (*_X, "approximate")),
    torch.tanh: ("tanh", _X), F.tanh: ("tanh", _X),
    F.leaky_relu: ("leaky_relu", (*_X, "negative_slope")), F.prelu: ("prelu", (*_X, "weight")),
    F.max_pool2d: ("max_pool", (*_X, "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                "return_indices")),
    F.avg_pool2d: ("avg_pool", (*_X, "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                "divisor_override")),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool", (*_X, "output_size")),
    F.adaptive_max_pool2d: ("adaptive_max_pool", (*_X, "output_size", "return_indices")),
    F.layer_norm: ("layer_norm", (*_X, "normalized_shape", "weight", "bias", "eps")),
    F.linear: ("linear", (*_X, "weight", "bias")),
    F.interpolate: ("interpolate", (*_X, "size", "scale_factor", "mode", "align_corners",
                                    "recompute_scale_factor", "antialias")),
    F.pad: ("pad", (*_X, "pad", "mode", "value")),
    F.dropout: ("identity", _X), F.dropout2d: ("identity", _X),
    operator.add: ("add", ("input", "other")), torch.add: ("add", ("input", "other")),
    operator.iadd: ("add", ("input", "other")),
    operator.sub: ("sub", ("input", "other")), torch.sub: ("sub", ("input", "other")),
    operator.isub: ("sub", ("input", "other")),
    operator.mul: ("mul", ("input", "other")), torch.mul: ("mul", ("input", "other")),
    operator.imul: ("mul", ("input", "other")),
    operator.truediv: ("div", ("input", "other")), torch.div: ("div", ("input", "other")),
    operator.itruediv: ("div", ("input", "other")), operator.neg: ("neg", _X), torch.neg: ("neg", _X),
    torch.cat: ("cat", ("tensors", "dim")), torch.concat: ("cat", ("tensors", "dim")),
    torch.flatten: ("flatten", (*_X, "start_dim", "end_dim")),
    torch.reshape: ("reshape", _X), torch.squeeze: ("reshape", _X), torch.unsqueeze: ("reshape", _X),
    torch.permute: ("permute", (*_X, "dims")), torch.transpose: ("transpose", (*_X, "dim0", "dim1")),
    torch.chunk: ("chunk", (*_X, "chunks", "dim")),
    torch.split: ("split", ("tensor", "split_size_or_sections", "dim")),
    torch.mean: ("mean", (*_X, "dim", "keepdim")),
    operator.getitem: ("getitem", (*_X, "index")),
}  # fmt: skip

METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "relu": ("relu", _X), "relu_": ("relu", _X), "sigmoid": ("sigmoid", _X), "sigmoid_": ("sigmoid", _X),
    "tanh": ("tanh", _X), "tanh_": ("tanh", _X),
    "add": ("add", ("input", "other")), "add_": ("add", ("input", "other")),
    "sub": ("sub", ("input", "other")), "sub_": ("sub", ("input", "other")),
    "mul": ("mul", ("input", "other")), "mul_": ("mul", ("input", "other")),
    "div": ("div", ("input", "other")), "div_": ("div", ("input", "other")),
    "view": ("reshape", _X), "reshape": ("reshape", _X),
    "flatten": ("flatten", (*_X, "start_dim", "end_dim")),
    "squeeze": ("reshape", _X), "unsqueeze": ("reshape", _X), "view_as": ("reshape", _X),
    "reshape_as": ("reshape", _X), "expand_as": ("expand", _X), "expand": ("expand", _X),
    "permute": ("permute", (*_X, "dims")), "transpose": ("transpose", (*_X, "dim0", "dim1")),
    "chunk": ("chunk", (*_X, "chunks", "dim")), "split": ("split", (*_X, "split_size", "dim")),
    "mean": ("mean", (*_X, "dim", "keepdim")),
    "contiguous": ("identity", _X), "clone": ("identity", _X), "detach": ("identity", _X),
}  # fmt: skip


def module_op(mod: nn.Module) -> str | None:
    """The operation a module performs (by its class or a base class), or None."""
    for cls in type(mod).__mro__:
        if cls in MODULES:
            return MODULES[cls]
    return None


def canonical(n: fx.Node, mod: nn.Module | None = None) -> tuple[str | None, dict]:
    """(operation, arguments by name) of a call node; (None, {}) for an unknown spelling.

    Module calls get their input as ``input``; the module itself carries the rest.
    """
    if n.op == "call_module":
        return module_op(mod), {"input": n.args[0] if n.args else None}
    table = FUNCTIONS if n.op == "call_function" else METHODS
    key = n.target
    try:
        entry = table.get(key)
    except TypeError:  # an unhashable target
        entry = None
    if entry is None:
        return None, {}
    op, names = entry
    args = dict(n.kwargs)
    if op in ("reshape", "expand"):
        args["input"] = n.args[0]
    elif op == "permute" and len(n.args) > 2:  # x.permute(0, 2, 3, 1)
        args.update(input=n.args[0], dims=tuple(n.args[1:]))
    else:
        args.update(zip(names, n.args))
    return op, args
