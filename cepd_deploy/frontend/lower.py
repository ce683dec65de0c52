"""Lowering: nn.Module (dense or CEPD) -> Plan. BN folded, TT orders chosen, epilogues fused.

>>> plan = lower(build_model("resnet20"), (1, 3, 32, 32))      # doctest: +SKIP
>>> totals(plan)["macs"]                                       # doctest: +SKIP
40551424
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.plan import passes
from cepd_deploy.plan.cost import nodes_macs
from cepd_deploy.plan.ir import (
    ConvAttrs,
    Epilogue,
    LayerInfo,
    NoAttrs,
    Node,
    Op,
    Plan,
    PoolAttrs,
    ReluAttrs,
    unique_name,
)
from cepd_deploy.plan.ttconv import CostFn, can_fold_scale, choose_path, lower_ttconv, ttconv_weights
from cepd_deploy.plan.verify import verify


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, CEPDConv2d) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """fx-trace a model, keeping CEPD convs whole; untraceable models get a clear error."""
    try:
        return fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # fx raises many types (control flow, names it cannot generate)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CEPDError(f"cannot trace {type(model).__name__} with torch.fx: {first}") from None


def lower(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    cost: CostFn = nodes_macs,
    fuse: bool = True,
) -> Plan:
    """Lower a model to a Plan for a given input shape (N, C, H, W).

    ``cost`` scores the candidate lowerings of each CEPD conv (default: MACs); a target may
    pass its own (e.g. a latency model). With ``fuse`` ReLU and residual adds become epilogues.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise CEPDError(f"input shape must be (N, C, H, W) with positive sizes, got {input_shape}")
    gm = trace(model)
    shapes = _shapes(gm, input_shape)
    lw = _Lowering(gm, shapes, cost)
    plan = lw.run(input_shape)
    verify(plan)
    return passes.run(plan, ("fuse_epilogues",) if fuse else ())


#: largest input (values) run for real when the meta-device trace fails (1 GiB of float32)
REAL_TRACE_LIMIT = 1 << 28


def _shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Output shape of every fx node (eval mode).

    Traced on the meta device (no memory, no arithmetic, whatever the batch or image size);
    a model with an op the meta device lacks is run once on real zeros instead, if the input
    is at most ``REAL_TRACE_LIMIT`` values.
    """
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            try:
                return _ShapeInterp(gm, meta=True).shapes_for(input_shape)
            except CEPDError:
                raise
            except Exception as exc:  # an op without a meta kernel, data-dependent Python: run it for real
                if math.prod(input_shape) > REAL_TRACE_LIMIT:
                    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                    raise CEPDError(f"cannot trace the shapes of input {input_shape} without running the "
                                    f"model, and it is too large to run ({first})") from None  # fmt: skip
            try:
                return _ShapeInterp(gm, meta=False).shapes_for(input_shape)
            except CEPDError:
                raise
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise CEPDError(f"model does not accept input shape {input_shape}: {first}") from None
    finally:
        gm.train(was_training)


class _ShapeInterp(fx.Interpreter):
    """Records every node's output shape; with ``meta`` parameters and inputs live on the meta
    device, and CEPD convs (whose forward reads its filter indices) get their shape by formula."""

    def __init__(self, gm: fx.GraphModule, meta: bool) -> None:
        super().__init__(gm)
        self.meta = meta
        self.shapes: dict[str, tuple[int, ...]] = {}

    def shapes_for(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        self.run(torch.zeros(input_shape, device="meta" if self.meta else "cpu"))
        return self.shapes

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape)
        return out

    def fetch_attr(self, target: str):
        value = super().fetch_attr(target)
        return value.to("meta") if self.meta and isinstance(value, torch.Tensor) else value

    def call_module(self, target, args, kwargs):
        if not self.meta:
            return super().call_module(target, args, kwargs)
        mod = self.module.get_submodule(target)
        if isinstance(mod, CEPDConv2d):
            return torch.empty(_conv_out_shape(mod, tuple(args[0].shape)), device="meta")
        from torch.func import functional_call

        state = {k: v.to("meta") for k, v in (*mod.named_parameters(), *mod.named_buffers())}
        return functional_call(mod, state, args, kwargs)


def _conv_out_shape(conv: CEPDConv2d, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, O, H', W') of a CEPD conv for an (N, I, H, W) input (the usual conv formula)."""
    s = conv.spec
    if len(in_shape) != 4 or in_shape[1] != conv.in_channels:
        raise ValueError(f"CEPD conv of {conv.in_channels} input channels got a {in_shape} input")
    out = [
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, pad, dil, k, stride in zip(in_shape[2:], s.padding, s.dilation, conv.kernel_size, s.stride)
    ]
    if min(out) < 1:
        raise ValueError(f"input {in_shape} is smaller than the kernel of a CEPD conv")
    return (in_shape[0], conv.out_channels, *out)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm (eval) as y = x*scale + shift."""
    if bn.running_var is None:
        raise CEPDError("BatchNorm without running statistics cannot be folded")
    inv = torch.rsqrt(bn.running_var.double() + bn.eps)
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(inv)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv)
    scale = weight * inv
    return scale, bias - bn.running_mean.double() * scale


_RELU_FUNCS = {F.relu: None, torch.relu: None, F.relu6: 6.0}
_ADD_FUNCS = {operator.add, torch.add}


class _Lowering:
    def __init__(self, gm: fx.GraphModule, shapes: dict, cost: CostFn) -> None:
        self.gm, self.shapes, self.cost = gm, shapes, cost
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.alias: dict[str, str] = {}  # fx node name -> plan value name
        self.folded: set[str] = set()  # BN fx nodes folded into their conv
        self.names: set[str] = set()

    def value(self, n: fx.Node) -> str:
        return self.alias[n.name]

    def shape(self, n: fx.Node) -> tuple[int, ...]:
        return self.shapes[n.name]

    def run(self, input_shape: tuple[int, ...]) -> Plan:
        inp = out = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if inp is not None:
                    raise CEPDError("models with more than one input are not supported")
                inp = n.name
                self.alias[n.name] = n.name
            elif n.op == "output":
                arg = n.args[0]
                if not isinstance(arg, fx.Node):
                    raise CEPDError("models must return a single tensor")
                out = self.value(arg)
            elif n.name in self.folded:
                continue
            else:
                self.lower_node(n)
        return Plan(inp, input_shape, out, self.nodes, self.consts, self.layers)

    # -- helpers --------------------------------------------------------------------------
    def emit(self, node: Node, fx_node: fx.Node | None = None) -> None:
        self.nodes.append(node)
        if fx_node is not None:
            self.alias[fx_node.name] = node.output

    def const(self, name: str, value: torch.Tensor) -> str:
        self.consts[name] = _np(value)
        return name

    def bn_after(self, n: fx.Node) -> nn.BatchNorm2d | None:
        """The BatchNorm that is the only user of n, if any (it will be folded)."""
        users = list(n.users)
        if len(users) == 1 and users[0].op == "call_module":
            mod = self.modules[users[0].target]
            if isinstance(mod, nn.BatchNorm2d):
                self.folded.add(users[0].name)
                return mod
        return None

    def unique(self, base: str) -> str:
        return unique_name(base, self.names)

    # -- dispatch -------------------------------------------------------------------------
    def lower_node(self, n: fx.Node) -> None:
        if n.op == "call_module":
            mod = self.modules[n.target]
            for kind, handler in self.MODULE_HANDLERS:
                if isinstance(mod, kind):
                    return handler(self, n, mod)
            raise CEPDError(f"unsupported layer {n.target!r} ({type(mod).__name__})")
        if n.op in ("call_function", "call_method"):
            return self.lower_function(n)
        if n.op == "get_attr":
            raise CEPDError(f"unsupported use of a model attribute {n.target!r} in forward")
        raise CEPDError(f"unsupported graph node {n.op} {n.target}")

    def lower_conv(self, n: fx.Node, conv: nn.Conv2d) -> None:
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise CEPDError(f"conv {n.target!r}: only explicit zero padding is supported")
        name = self.unique(n.target)
        x = n.args[0]
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else None
        bn = self.bn_after(n)
        if bn is not None:
            scale, shift = _bn_affine(bn)
            w = w * scale.reshape(-1, 1, 1, 1)
            b = shift + (scale * b if b is not None else 0)
        in_shape, out_shape = self.shape(x), self.shapes[next(iter(n.users)).name if bn else n.name]
        attrs = ConvAttrs(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding),
                          tuple(conv.dilation), conv.groups, 1, conv.in_channels,
                          conv.out_channels)  # fmt: skip
        weights = (self.const(f"{name}.w", w),)
        epi = Epilogue(bias=self.const(f"{name}.bias", b) if b is not None else None)
        node = Node(Op.CONV, name, (self.value(x),), name, (in_shape,), out_shape, weights, attrs,
                    epi, name)  # fmt: skip
        self.emit(node, n)
        if bn is not None:
            self.alias[next(iter(n.users)).name] = name
        self.layers[name] = LayerInfo(name, "conv", tuple(conv.weight.shape), in_shape, out_shape,
                                      conv.groups)  # fmt: skip

    def lower_cepd(self, n: fx.Node, layer: CEPDConv2d) -> None:
        name = self.unique(n.target)
        x = n.args[0]
        spec = layer.spec
        in_shape = self.shape(x)
        bn = self.bn_after(n)
        out_fx = next(iter(n.users)) if bn is not None else n
        scale = shift = None
        if bn is not None:
            scale, shift = _bn_affine(bn)
        fold = scale is not None and can_fold_scale(spec.layout)
        unfolded_scale = scale is not None and not fold
        path = choose_path(spec, in_shape, self.cost, scale=unfolded_scale)
        bias = layer.bias.detach().double() if layer.bias is not None else None
        if scale is not None:
            bias = shift + (scale * bias if bias is not None else 0)
        nodes = lower_ttconv(spec, name, self.value(x), in_shape, path, scale=unfolded_scale,
                             bias=bias is not None, index=layer.s_index.tolist())  # fmt: skip
        cores = [c.detach().double() for c in layer.cores]
        weights = ttconv_weights(spec, name, path, cores, layer.s_weight.detach().double(),
                                 layer.s_index, scale=scale, fold_scale=fold)  # fmt: skip
        for k, v in weights.items():
            self.const(k, v)
        if unfolded_scale:
            self.const(f"{name}.scale", scale)
        if bias is not None:
            self.const(f"{name}.bias", bias)
        for node in nodes:
            self.emit(node)
        self.alias[out_fx.name] = nodes[-1].output
        path_text = path if isinstance(path, str) else path.describe(spec.layout)
        lay = spec.layout
        self.layers[name] = LayerInfo(
            name, "cepd", (lay.out_channels, lay.in_channels, *lay.kernel), in_shape,
            self.shapes[out_fx.name], 1, lay.name,
            f"O={'x'.join(map(str, lay.o_factors))} I={'x'.join(map(str, lay.i_factors))}",
            spec.ranks, spec.kappa, path_text)  # fmt: skip

    def lower_bn(self, n: fx.Node, bn: nn.BatchNorm2d) -> None:
        name = self.unique(n.target)
        scale, shift = _bn_affine(bn)
        shape = self.shape(n)
        weights = (self.const(f"{name}.scale", scale), self.const(f"{name}.shift", shift))
        self.emit(Node(Op.AFFINE, name, (self.value(n.args[0]),), name, (shape,), shape, weights,
                       layer=name), n)  # fmt: skip

    def lower_linear(self, n: fx.Node, lin: nn.Linear) -> None:
        name = self.unique(n.target)
        x = n.args[0]
        weights = (self.const(f"{name}.w", lin.weight),)
        epi = Epilogue(bias=self.const(f"{name}.bias", lin.bias) if lin.bias is not None else None)
        in_shape = self.shape(x)
        if len(in_shape) != 2:
            raise CEPDError(f"linear {n.target!r} must follow a flatten (got input {in_shape})")
        self.emit(Node(Op.LINEAR, name, (self.value(x),), name, (in_shape,), self.shape(n),
                       weights, NoAttrs(), epi, name), n)  # fmt: skip
        self.layers[name] = LayerInfo(name, "linear", tuple(lin.weight.shape), in_shape,
                                      self.shape(n))  # fmt: skip

    def lower_relu(self, n: fx.Node, mod: nn.Module | None = None, max_value=None) -> None:
        if isinstance(mod, nn.ReLU6):
            max_value = 6.0
        name = self.unique(n.target if mod is not None else n.name)
        shape = self.shape(n)
        self.emit(Node(Op.RELU, name, (self.value(n.args[0]),), name, (shape,), shape,
                       attrs=ReluAttrs(max_value), layer=name), n)  # fmt: skip

    def lower_pool(self, n: fx.Node, mod: nn.Module) -> None:
        name = self.unique(n.target)
        x = n.args[0]
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            if self.shape(n)[2:] != (1, 1):
                raise CEPDError(f"{n.target!r}: only AdaptiveAvgPool2d to 1x1 is supported")
            op, attrs = Op.GLOBAL_AVGPOOL, NoAttrs()
        else:
            if getattr(mod, "dilation", 1) not in (1, (1, 1)) or getattr(mod, "return_indices", False):
                raise CEPDError(f"{n.target!r}: dilated or index-returning pooling is not supported")
            if isinstance(mod, nn.AvgPool2d) and (not mod.count_include_pad or mod.divisor_override):
                raise CEPDError(f"{n.target!r}: AvgPool2d must count padding and use no divisor override")
            op = Op.MAXPOOL if isinstance(mod, nn.MaxPool2d) else Op.AVGPOOL
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
            attrs = PoolAttrs(pair(mod.kernel_size), pair(mod.stride or mod.kernel_size), pair(mod.padding),
                              bool(mod.ceil_mode))  # fmt: skip
        self.emit(Node(op, name, (self.value(x),), name, (self.shape(x),), self.shape(n),
                       attrs=attrs, layer=name), n)  # fmt: skip

    def lower_identity(self, n: fx.Node, mod: nn.Module) -> None:
        self.alias[n.name] = self.value(n.args[0])

    MODULE_HANDLERS: list[tuple[type, Callable]] = [
        (CEPDConv2d, lower_cepd),
        (nn.Conv2d, lower_conv),
        (nn.BatchNorm2d, lower_bn),
        (nn.Linear, lower_linear),
        ((nn.ReLU, nn.ReLU6), lower_relu),
        ((nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d), lower_pool),
        ((nn.Dropout, nn.Identity), lower_identity),
    ]

    def lower_function(self, n: fx.Node) -> None:
        fn, args = n.target, n.args
        shape = self.shape(n)
        if fn in _RELU_FUNCS or n.target in ("relu", "relu_"):
            return self.lower_relu(n, None, _RELU_FUNCS.get(fn))
        if fn in _ADD_FUNCS or n.target == "add":
            if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args) or n.kwargs:
                raise CEPDError(f"{n.name}: only tensor + tensor adds are supported")
            if self.shape(args[0]) != self.shape(args[1]):
                raise CEPDError(f"{n.name}: broadcasting adds are not supported")
            name = self.unique(n.name)
            self.emit(Node(Op.ADD, name, tuple(self.value(a) for a in args), name,
                           (shape, shape), shape, layer=name), n)  # fmt: skip
            return None
        if fn is torch.cat:
            tensors = args[0]
            dim = args[1] if len(args) > 1 else n.kwargs.get("dim", 0)
            if dim not in (1, -3) or len(shape) != 4:
                raise CEPDError(f"{n.name}: only channel concatenation is supported")
            name = self.unique(n.name)
            self.emit(Node(Op.CONCAT, name, tuple(self.value(a) for a in tensors), name,
                           tuple(self.shape(a) for a in tensors), shape, layer=name), n)  # fmt: skip
            return None
        if fn is torch.flatten or n.target == "flatten":
            start = args[1] if len(args) > 1 else n.kwargs.get("start_dim", 0 if fn is torch.flatten else 0)
            if start != 1 or len(shape) != 2:
                raise CEPDError(f"{n.name}: only flatten(x, 1) is supported")
            name = self.unique(n.name)
            self.emit(Node(Op.FLATTEN, name, (self.value(args[0]),), name, (self.shape(args[0]),),
                           shape, layer=name), n)  # fmt: skip
            return None
        if fn in (F.dropout,) or n.target in ("contiguous",):
            self.alias[n.name] = self.value(args[0])
            return None
        what = getattr(fn, "__name__", str(fn))
        raise CEPDError(f"unsupported operation {what!r} (node {n.name})")
