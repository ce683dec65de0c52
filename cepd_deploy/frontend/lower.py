"""Lowering: nn.Module (dense or CEPD) -> Plan. BN folded, TT orders chosen, epilogues fused.

The model is traced with torch.fx (:mod:`~cepd_deploy.frontend.trace`); every spelling of an
operation (:mod:`~cepd_deploy.frontend.spellings`) lowers to one Plan op; shape arithmetic is
evaluated with the static input shape; views (reshape, permute, channel shuffles, channels-last
code) are followed statically (:mod:`~cepd_deploy.frontend.views`) and cost nothing unless an op
needs the data moved. What cannot be lowered is a one-line error naming the operation, the
module and the source line.

>>> plan = lower(build_model("resnet20"), (1, 3, 32, 32))      # doctest: +SKIP
>>> totals(plan)["macs"]                                       # doctest: +SKIP
40551424
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.convs import add_pads, conv_form, pair
from cepd_deploy.frontend.ops import Handlers, Unsupported, Val, bn_affine, describe
from cepd_deploy.frontend.spellings import canonical
from cepd_deploy.frontend.trace import interpret, trace, where
from cepd_deploy.frontend.views import View, ViewError
from cepd_deploy.model.layers import CEPDConv2d
from cepd_deploy.plan import passes
from cepd_deploy.plan.contraction import DENSE
from cepd_deploy.plan.cost import nodes_macs
from cepd_deploy.plan.ir import (
    ConvAttrs,
    Epilogue,
    LayerInfo,
    NoAttrs,
    Node,
    Op,
    PadAttrs,
    PermuteAttrs,
    Plan,
    unique_name,
)
from cepd_deploy.plan.ttconv import CostFn, can_fold_scale, choose_path, lower_ttconv, ttconv_weights
from cepd_deploy.plan.verify import verify


def lower(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    cost: CostFn = nodes_macs,
    fuse: bool = True,
    dense: Collection[str] = (),
) -> Plan:
    """Lower a model to a Plan for a given input shape (N, C, H, W).

    ``cost`` scores the candidate lowerings of each CEPD conv (default: MACs); a target may
    pass its own (e.g. a latency model). With ``fuse`` ReLU and residual adds become epilogues.
    The CEPD convs named in ``dense`` run as the dense conv their L + S make (same function, more
    MACs): the stages a runtime runs faster that way (:mod:`~cepd_deploy.frontend.dense_stages`).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise CEPDError(f"input shape must be (N, C, H, W) with positive sizes, got {input_shape}")
    gm = trace(model)
    interp = interpret(gm, input_shape)
    plan = _Lowering(gm, interp.shapes, interp.values, cost, frozenset(dense)).run(input_shape)
    verify(plan)
    return passes.run(plan, ("fuse_epilogues",) if fuse else ())


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


class _Lowering(Handlers):
    """Walks the fx graph in order; the op handlers come from :class:`Handlers`."""

    def __init__(self, gm: fx.GraphModule, shapes: dict, values: dict, cost: CostFn,
                 dense: frozenset[str]) -> None:  # fmt: skip
        self.gm, self.shapes, self.values, self.cost, self.dense = gm, shapes, values, cost, dense
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.vals: dict[str, Val] = {}  # fx node name -> the tensor it is
        self.params: dict[str, torch.Tensor] = {}  # fx get_attr node name -> the parameter/buffer
        self.pieces: dict[str, tuple[Val, int, list[int]]] = {}  # chunk/split: (source, dim, sizes)
        self.folded: set[str] = set()  # BN fx nodes folded into their conv
        self.names: set[str] = set()
        self.plan_shapes: dict[str, tuple[int, ...]] = {}  # Plan value -> its stored shape

    def run(self, input_shape: tuple[int, ...]) -> Plan:
        inp = out = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if inp is not None:
                    raise CEPDError("models with more than one input are not supported")
                inp = n.name
                self.vals[n.name] = Val(n.name, View.of(input_shape))
                self.plan_shapes[n.name] = input_shape
                self.names.add(n.name)
            elif n.op == "output":
                arg = n.args[0]
                if not isinstance(arg, fx.Node) or arg.name not in self.vals:
                    raise CEPDError("models must return a single tensor")
                out = self.plain(arg)
            elif n.name not in self.folded:
                try:
                    self.lower_node(n)
                except Unsupported as exc:
                    raise CEPDError(f"{exc} {where(n)}") from None
                except ViewError as exc:
                    raise CEPDError(f"{exc} {where(n)}") from None
        return Plan(inp, input_shape, out, self.nodes, self.consts, self.layers)

    # -- values -------------------------------------------------------------------------------
    def shape(self, n: fx.Node) -> tuple[int, ...]:
        return self.shapes[n.name]

    def val(self, a) -> Val:
        if not isinstance(a, fx.Node) or a.name not in self.vals:
            raise Unsupported(f"expected a tensor of the network, got {describe(a)}")
        return self.vals[a.name]

    def static(self, a):
        """A Python value of shape arithmetic (fx nodes replaced by what they evaluated to)."""
        if isinstance(a, fx.Node):
            if a.name in self.shapes or a.name not in self.values:
                raise Unsupported(f"a tensor ({a.name}) is used where a number is expected")
            return self.values[a.name]
        if isinstance(a, (tuple, list)):
            return type(a)(self.static(x) for x in a)
        if isinstance(a, slice):
            return slice(self.static(a.start), self.static(a.stop), self.static(a.step))
        return a

    def set(self, n: fx.Node, name: str, view: View | None = None) -> None:
        self.vals[n.name] = Val(name, view if view is not None else View.of(self.shape(n)))

    def stored(self, a) -> str:
        """The Plan value of a tensor with any pending pad applied (its view unchanged)."""
        v = self.val(a)
        if v.pads is None:
            return v.name
        n, c, h, w = self.plan_shapes[v.name]
        top, bottom, left, right = v.pads
        out = (n, c, h + top + bottom, w + left + right)
        name = self.emit(Op.PAD, a.name, (v.name,), out, attrs=PadAttrs(v.pads))
        self.vals[a.name] = Val(name, View.of(out))
        return name

    def plain(self, a) -> str:
        """The Plan value of a tensor stored exactly as the code sees it (a PERMUTE or FLATTEN
        is emitted when the view needs one)."""
        name = self.stored(a)
        view = self.vals[a.name].view
        if view.is_identity:
            return name
        shape = view.shape
        perm = view.channel_permutation()
        if perm is not None:
            out = self.emit(Op.PERMUTE, f"{a.name}.permute", (name,), shape, attrs=PermuteAttrs(*perm))
        elif view.flattened():
            out = self.emit(Op.FLATTEN, f"{a.name}.flatten", (name,), shape)
        else:
            raise Unsupported(f"a tensor viewed as {shape} (stored as {view.stored_shape}) is read by an "
                              "op that needs it stored so (only shuffles and flattening are)")  # fmt: skip
        self.vals[a.name] = Val(out, View.of(shape))
        return out

    def nchw(self, a) -> str:
        name = self.plain(a)
        if len(self.plan_shapes[name]) != 4:
            raise Unsupported(f"expected an (N, C, H, W) tensor, got {self.plan_shapes[name]}")
        return name

    def emit(self, op: Op, base: str, inputs: tuple[str, ...], out_shape: tuple[int, ...], *,
             weights: tuple[str, ...] = (), attrs=None, epilogue: Epilogue | None = None,
             exact: bool = False) -> str:  # fmt: skip
        """Add a node writing a new value; its name is ``base`` made unique (or ``base`` itself
        with ``exact``, for a name already taken with :meth:`unique`)."""
        name = base if exact else unique_name(base, self.names)
        shapes = tuple(self.plan_shapes[x] for x in inputs)
        self.add_node(Node(op, name, inputs, name, shapes, tuple(out_shape), weights, attrs or NoAttrs(),
                           epilogue or Epilogue(), name))  # fmt: skip
        return name

    def add_node(self, node: Node) -> None:
        self.nodes.append(node)
        self.plan_shapes[node.output] = node.out_shape

    def const(self, name: str, value: torch.Tensor) -> str:
        self.consts[name] = _np(value)
        return name

    def unique(self, base: str) -> str:
        return unique_name(base, self.names)

    def bn_after(self, n: fx.Node) -> nn.BatchNorm2d | None:
        """The BatchNorm that is the only user of n, if any (it will be folded)."""
        users = list(n.users)
        if len(users) == 1 and users[0].op == "call_module":
            mod = self.modules[users[0].target]
            if type(mod) is nn.BatchNorm2d:
                self.folded.add(users[0].name)
                return mod
        return None

    # -- dispatch -----------------------------------------------------------------------------
    def lower_node(self, n: fx.Node) -> None:
        if n.op == "get_attr":
            value = self.gm
            for part in n.target.split("."):
                value = getattr(value, part)
            if not isinstance(value, torch.Tensor):
                raise Unsupported(f"model attribute {n.target!r} is not a tensor")
            self.params[n.name] = value.detach()
            return None
        mod = self.modules[n.target] if n.op == "call_module" else None
        if isinstance(mod, CEPDConv2d):
            return self.lower_cepd(n, mod)
        if isinstance(mod, nn.Conv2d):
            return self.lower_conv(n, mod)
        op, args = canonical(n, mod)
        if n.name not in self.shapes and op not in ("chunk", "split"):
            return None  # shape arithmetic (x.size(0), x.shape[-2:]...): its value is known statically
        if op is None:
            raise Unsupported(f"unsupported operation {_what(n, mod)}")
        getattr(self, f"op_{op}")(n, mod, args)
        x = n.args[0] if n.args else None
        if _in_place(n, mod) and isinstance(x, fx.Node) and x.name in self.vals:
            self.vals[x.name] = self.vals[n.name]  # later readers of x see what torch leaves there
        return None

    # -- convs ----------------------------------------------------------------------------------
    def lower_conv(self, n: fx.Node, conv: nn.Conv2d) -> None:
        try:
            form = conv_form(conv)
        except CEPDError as exc:
            raise Unsupported(str(exc)) from None
        x = self.val(n.args[0])
        if x.pads is not None and len(n.args[0].users) == 1:  # fold a pad only this conv reads
            src, padding = self.fold_pad(x.name, add_pads(x.pads, form.pads), f"{n.target}.pad")
        else:
            src, padding = self.fold_pad(self.nchw(n.args[0]), form.pads, f"{n.target}.pad")
        in_shape = self.plan_shapes[src]
        name = self.unique(n.target)
        w = form.weight.double()
        b = form.bias.double() if form.bias is not None else None
        bn = self.bn_after(n)
        if bn is not None:
            scale, shift = bn_affine(bn)
            w = w * scale.reshape(-1, 1, 1, 1)
            b = shift + (scale * b if b is not None else 0)
        out_fx = next(iter(n.users)) if bn else n
        out_shape = self.shape(out_fx)
        cout, cin = conv.out_channels, conv.in_channels
        attrs = ConvAttrs(pair(conv.kernel_size), form.stride, padding, form.dilation, form.groups, 1, cin,
                          cout)  # fmt: skip
        weights = (self.const(f"{name}.w", w),)
        epi = Epilogue(bias=self.const(f"{name}.bias", b) if b is not None else None)
        self.add_node(Node(Op.CONV, name, (src,), name, (in_shape,), out_shape, weights, attrs, epi, name))
        self.set(out_fx, name)
        self.layers[name] = LayerInfo(name, "conv", tuple(conv.weight.shape), in_shape, out_shape,
                                      form.groups)  # fmt: skip

    def fold_pad(self, src: str, pads: tuple[int, int, int, int], base: str) -> tuple[str, tuple[int, int]]:
        """(the value a conv reads, its symmetric padding) for a conv of ``src`` with ``pads``
        (top, bottom, left, right): the one-sided remainder becomes a PAD node."""
        ph, pw = min(pads[0], pads[1]), min(pads[2], pads[3])
        extra = (pads[0] - ph, pads[1] - ph, pads[2] - pw, pads[3] - pw)
        if any(extra):
            n, c, h, w = self.plan_shapes[src]
            shape = (n, c, h + extra[0] + extra[1], w + extra[2] + extra[3])
            src = self.emit(Op.PAD, base, (src,), shape, attrs=PadAttrs(extra))
        return src, (ph, pw)

    def lower_cepd(self, n: fx.Node, layer: CEPDConv2d) -> None:
        name = self.unique(n.target)
        spec, v = layer.spec, self.val(n.args[0])
        if layer.channels_last:
            if not v.view.channels_last():
                raise Unsupported("a channels-last CEPD layer reads a tensor that is not channels-last")
            x = self.stored(n.args[0])
        elif v.pads is not None and len(n.args[0].users) == 1:  # the layer is linear: fold the pad
            ph, pw = spec.padding
            x, padding = self.fold_pad(v.name, add_pads(v.pads, (ph, ph, pw, pw)), f"{n.target}.pad")
            spec = replace(spec, padding=padding)
        else:
            x = self.nchw(n.args[0])
        in_shape = self.plan_shapes[x]
        bn = self.bn_after(n)
        out_fx = next(iter(n.users)) if bn is not None else n
        scale = shift = None
        if bn is not None:
            scale, shift = bn_affine(bn)
        fold = scale is not None and can_fold_scale(spec.layout)
        unfolded_scale = scale is not None and not fold
        if name in self.dense:
            path = DENSE
        else:
            path = choose_path(spec, in_shape, self.cost, scale=unfolded_scale)
        bias = layer.bias.detach().double() if layer.bias is not None else None
        if scale is not None:
            bias = shift + (scale * bias if bias is not None else 0)
        nodes = lower_ttconv(spec, name, x, in_shape, path, scale=unfolded_scale,
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
            self.add_node(node)
        out_shape = nodes[-1].out_shape
        view = View.of(out_shape).permute((0, 2, 3, 1)) if layer.channels_last else View.of(out_shape)
        self.vals[out_fx.name] = Val(nodes[-1].output, view)
        self.plan_shapes[nodes[-1].output] = out_shape
        path_text = path if isinstance(path, str) else path.describe(spec.layout)
        lay = spec.layout
        self.layers[name] = LayerInfo(
            name, "cepd", (lay.out_channels, lay.in_channels, *lay.kernel), in_shape, out_shape, 1, lay.name,
            f"O={'x'.join(map(str, lay.o_factors))} I={'x'.join(map(str, lay.i_factors))}",
            spec.ranks, spec.kappa, path_text)  # fmt: skip


def _in_place(n: fx.Node, mod: nn.Module | None) -> bool:
    """The op overwrites its input (``x.relu_()``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``)."""
    if mod is not None:
        return bool(getattr(mod, "inplace", False))
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    trailing = isinstance(name, str) and name.endswith("_") and not name.endswith("__")
    return bool(n.kwargs.get("inplace")) or trailing


def _what(n: fx.Node, mod: nn.Module | None) -> str:
    """How the user wrote an operation: the module class, the function or the tensor method."""
    if mod is not None:
        return f"{type(mod).__name__} (module {n.target!r})"
    if n.op == "call_method":
        return f"Tensor.{n.target}()"
    fn = n.target
    owner = getattr(fn, "__module__", None) or ""
    owner = {"torch._C._nn": "torch.nn.functional", "torch._C._VariableFunctions": "torch"}.get(owner, owner)
    return f"{owner + '.' if owner else ''}{getattr(fn, '__name__', str(fn))}()"
