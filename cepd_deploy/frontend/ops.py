"""The lowering's handlers of every operation except convs: one ``op_<name>`` per name that
:mod:`~cepd_deploy.frontend.spellings` gives, reading its arguments by name.

:class:`Handlers` is the op half of :class:`cepd_deploy.frontend.lower._Lowering`, which supplies
the value bookkeeping the handlers use (``val``, ``stored``, ``plain``, ``nchw``, ``emit``,
``const``, ``static``, ``param``, ``set``, ``unique``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.frontend.convs import pad_call_pads, pad_module_pads, pair
from cepd_deploy.frontend.views import View
from cepd_deploy.plan.ir import (
    ActAttrs,
    Epilogue,
    LayerInfo,
    MatmulAttrs,
    NormAttrs,
    Op,
    PoolAttrs,
    ReluAttrs,
    ResizeAttrs,
    SliceAttrs,
)


class Unsupported(Exception):
    """Raised inside a handler; the lowering adds the node's operation and source location."""


@dataclass(frozen=True)
class Val:
    """A tensor of the model's code: a Plan value seen through a view, maybe with a zero pad
    still to apply (kept back so a conv that reads it folds it into its own padding)."""

    name: str
    view: View
    pads: tuple[int, int, int, int] | None = None


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm (eval) as y = x*scale + shift."""
    if bn.running_var is None:
        raise CEPDError("BatchNorm without running statistics cannot be folded")
    inv = torch.rsqrt(bn.running_var.double() + bn.eps)
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(inv)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv)
    scale = weight * inv
    return scale, bias - bn.running_mean.double() * scale


def describe(a) -> str:
    """A short name of an fx argument, for errors."""
    if isinstance(a, fx.Node):
        return f"{a.op} {a.name}"
    return type(a).__name__


_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices",
              "count_include_pad", "divisor_override")  # fmt: skip


class Handlers:
    """``op_<name>(fx node, module or None, arguments by name)`` for every operation name."""

    # -- elementwise ----------------------------------------------------------------------------
    def unary(self, n: fx.Node, op: Op, attrs, weights: tuple[str, ...] = (), plain: bool = False) -> None:
        """An elementwise op on the stored value; the result keeps the input's view."""
        x = n.args[0]
        name = self.plain(x) if plain else self.stored(x)
        view = self.vals[x.name].view
        shape = self.plan_shapes[name]
        out = self.emit(op, n.target if n.op == "call_module" else n.name, (name,), shape, weights=weights,
                        attrs=attrs)  # fmt: skip
        self.set(n, out, view)

    def op_relu(self, n, mod, args) -> None:
        self.unary(n, Op.RELU, ReluAttrs())

    def op_relu6(self, n, mod, args) -> None:
        self.unary(n, Op.RELU, ReluAttrs(6.0))

    def op_hardtanh(self, n, mod, args) -> None:
        lo = mod.min_val if mod is not None else self.static(args.get("min_val", -1.0))
        hi = mod.max_val if mod is not None else self.static(args.get("max_val", 1.0))
        if (lo, hi) != (0, 6):
            raise Unsupported(f"hardtanh({lo}, {hi}) (only hardtanh(0, 6), i.e. ReLU6, is supported)")
        self.unary(n, Op.RELU, ReluAttrs(6.0))

    def _act(self, n, mod, args, kind: str) -> None:
        if kind == "gelu":
            approx = mod.approximate if mod is not None else self.static(args.get("approximate", "none"))
            if approx != "none":
                raise Unsupported(f"GELU(approximate={approx!r}) (only the exact erf GELU is supported)")
        if kind == "leaky_relu":
            slope = mod.negative_slope if mod is not None else self.static(args.get("negative_slope", 0.01))
            return self.unary(n, Op.ACT, ActAttrs(kind, float(slope)))
        if kind == "prelu":
            weight = mod.weight if mod is not None else self.param(args.get("weight"))
            c = self.shape(n.args[0])[1]
            if weight.numel() not in (1, c):
                raise Unsupported(f"PReLU with {weight.numel()} slopes on {c} channels")
            base = n.target if mod is not None else n.name
            name = self.const(self.unique(f"{base}.slope"), weight.detach().reshape(-1))
            return self.unary(n, Op.ACT, ActAttrs(kind), (name,), plain=True)
        return self.unary(n, Op.ACT, ActAttrs(kind))

    def op_sigmoid(self, n, mod, args) -> None:
        self._act(n, mod, args, "sigmoid")

    def op_hardsigmoid(self, n, mod, args) -> None:
        self._act(n, mod, args, "hardsigmoid")

    def op_silu(self, n, mod, args) -> None:
        self._act(n, mod, args, "silu")

    def op_hardswish(self, n, mod, args) -> None:
        self._act(n, mod, args, "hardswish")

    def op_gelu(self, n, mod, args) -> None:
        self._act(n, mod, args, "gelu")

    def op_tanh(self, n, mod, args) -> None:
        self._act(n, mod, args, "tanh")

    def op_leaky_relu(self, n, mod, args) -> None:
        self._act(n, mod, args, "leaky_relu")

    def op_prelu(self, n, mod, args) -> None:
        self._act(n, mod, args, "prelu")

    def param(self, a) -> torch.Tensor:
        if isinstance(a, fx.Node) and a.name in self.params:
            return self.params[a.name]
        raise Unsupported(f"expected a parameter of the model, got {describe(a)}")

    def op_identity(self, n, mod, args) -> None:
        self.vals[n.name] = self.val(args["input"])

    # -- arithmetic -----------------------------------------------------------------------------
    def _operands(self, args) -> tuple:
        a, b = args.get("input"), args.get("other")
        if "alpha" in args and args["alpha"] != 1:
            raise Unsupported("add/sub with alpha")
        return a, b

    def _is_tensor(self, a) -> bool:
        return isinstance(a, fx.Node) and a.name in self.vals

    def affine(self, n: fx.Node, x, scale, shift) -> None:
        """x * scale + shift with scalars or per-channel tensors (of the view's channel dim)."""
        name = self.stored(x)
        shape, view = self.plan_shapes[name], self.vals[x.name].view
        if len(shape) != 4:
            raise Unsupported(f"arithmetic with constants on a {len(shape)}-d tensor (only (N, C, H, W))")
        s, t = (self._per_channel(v, view, shape[1]) for v in (scale, shift))
        base = self.unique(n.name)
        weights = (self.const(f"{base}.scale", s), self.const(f"{base}.shift", t))
        self.set(n, self.emit(Op.AFFINE, base, (name,), shape, weights=weights, exact=True), view)

    def _per_channel(self, v, view: View, c: int) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.float64).detach()
        if t.numel() == 1:
            return t.reshape(1).expand(c).clone()
        logical = view.shape
        if t.dim() > len(logical):
            raise Unsupported(f"a constant of shape {tuple(t.shape)} against a tensor of shape {logical}")
        full = (1,) * (len(logical) - t.dim()) + tuple(t.shape)
        big = [d for d, s in enumerate(full) if s != 1]
        if len(big) != 1 or view.stored_dim(big[0]) != 1 or full[big[0]] != c:
            raise Unsupported(f"a constant of shape {tuple(t.shape)} that is not per channel of a tensor "
                              f"of shape {logical}")  # fmt: skip
        return t.reshape(c)

    def op_add(self, n, mod, args) -> None:
        a, b = self._operands(args)
        if self._is_tensor(a) and self._is_tensor(b):
            return self.binary(n, Op.ADD, a, b)
        x, k = (a, b) if self._is_tensor(a) else (b, a)
        self.affine(n, x, 1.0, self._number(k))

    def op_sub(self, n, mod, args) -> None:
        a, b = self._operands(args)
        if not (self._is_tensor(a) and self._is_tensor(b)):
            if self._is_tensor(a):
                return self.affine(n, a, 1.0, -self._number(b))
            return self.affine(n, b, -1.0, self._number(a))
        x, y = self.plain(a), self.plain(b)
        shape = self.plan_shapes[x]
        if shape != self.plan_shapes[y] or len(shape) != 4:
            raise Unsupported(f"subtracting tensors of shapes {shape} and {self.plan_shapes[y]}")
        base = self.unique(f"{n.name}.neg")
        minus = torch.full((shape[1],), -1.0)
        weights = (self.const(f"{base}.scale", minus), self.const(f"{base}.shift", 0 * minus))
        neg = self.emit(Op.AFFINE, base, (y,), shape, weights=weights, exact=True)
        self.set(n, self.emit(Op.ADD, n.name, (x, neg), shape))

    def op_neg(self, n, mod, args) -> None:
        self.affine(n, args["input"], -1.0, 0.0)

    def op_mul(self, n, mod, args) -> None:
        a, b = self._operands(args)
        if self._is_tensor(a) and self._is_tensor(b):
            return self.binary(n, Op.MUL, a, b)
        x, k = (a, b) if self._is_tensor(a) else (b, a)
        self.affine(n, x, self._number(k), 0.0)

    def op_div(self, n, mod, args) -> None:
        a, b = self._operands(args)
        if self._is_tensor(b):
            raise Unsupported("division by a tensor")
        if "rounding_mode" in args and args["rounding_mode"] is not None:
            raise Unsupported("division with rounding")
        self.affine(n, a, 1.0 / self._number(b), 0.0)

    def _number(self, v) -> torch.Tensor:
        if isinstance(v, fx.Node) and v.name in self.params:
            return self.params[v.name].double()
        return torch.as_tensor(self.static(v), dtype=torch.float64)

    def binary(self, n: fx.Node, op: Op, a, b) -> None:
        """ADD or MUL of two tensors: the same shape, or (MUL) one broadcast over the image."""
        va, vb = self.val(a), self.val(b)
        sa, sb = va.view.shape, vb.view.shape
        if sa != sb and op is Op.MUL and len(sa) == 4 and len(sb) == 4:
            if sa[:2] == sb[:2] and sa[2:] == (1, 1):
                a, b, sa, sb = b, a, sb, sa
            if not (sb[:2] == sa[:2] and sb[2:] == (1, 1)):
                raise Unsupported(f"multiplying tensors of shapes {sa} and {sb} (only the same shape, or "
                                  "(N, C, 1, 1) broadcast over the image)")  # fmt: skip
            x, y = self.nchw(a), self.nchw(b)
        elif sa != sb:
            raise Unsupported(f"{op.value} of tensors of shapes {sa} and {sb} (no broadcasting)")
        elif va.view == vb.view and va.pads is None and vb.pads is None:
            x, y = va.name, vb.name
        else:
            x, y = self.plain(a), self.plain(b)
        view = self.vals[a.name].view
        out = self.emit(op, n.name, (x, y), self.plan_shapes[x])
        self.set(n, out, view)

    # -- pooling --------------------------------------------------------------------------------
    def _pool(self, n, mod, args, op: Op) -> None:
        if mod is not None:
            p = {k: getattr(mod, k, None) for k in _POOL_ARGS}
        else:
            p = {k: self.static(v) for k, v in args.items() if k != "input"}
        kernel = pair(p["kernel_size"])
        stride = kernel if p.get("stride") in (None, [], ()) else pair(p["stride"])
        if pair(p.get("dilation") or 1) != (1, 1) or p.get("return_indices"):
            raise Unsupported("dilated or index-returning pooling")
        if op is Op.AVGPOOL and (p.get("count_include_pad") is False or p.get("divisor_override")):
            raise Unsupported("average pooling must count padding and use no divisor override")
        attrs = PoolAttrs(kernel, stride, pair(p.get("padding") or 0), bool(p.get("ceil_mode")))
        x = self.nchw(args["input"])
        self.set(n, self.emit(op, n.target if mod is not None else n.name, (x,), self.shape(n), attrs=attrs))

    def op_max_pool(self, n, mod, args) -> None:
        self._pool(n, mod, args, Op.MAXPOOL)

    def op_avg_pool(self, n, mod, args) -> None:
        self._pool(n, mod, args, Op.AVGPOOL)

    def _adaptive(self, n, mod, args, op: Op) -> None:
        indices = getattr(mod, "return_indices", False) if mod is not None else args.get("return_indices")
        if self.static(indices):
            raise Unsupported("index-returning pooling")
        x = self.nchw(args["input"])
        _, _, h, w = self.plan_shapes[x]
        oh, ow = self.shape(n)[2:]
        base = n.target if mod is not None else n.name
        if (oh, ow) == (1, 1) and op is Op.AVGPOOL:
            return self.set(n, self.emit(Op.GLOBAL_AVGPOOL, base, (x,), self.shape(n)))
        if h % oh or w % ow:
            raise Unsupported(f"adaptive pooling from {h}x{w} to {oh}x{ow} (output must divide the input)")
        k = (h // oh, w // ow)
        self.set(n, self.emit(op, base, (x,), self.shape(n), attrs=PoolAttrs(k, k)))

    def op_adaptive_avg_pool(self, n, mod, args) -> None:
        self._adaptive(n, mod, args, Op.AVGPOOL)

    def op_adaptive_max_pool(self, n, mod, args) -> None:
        self._adaptive(n, mod, args, Op.MAXPOOL)

    def op_mean(self, n, mod, args) -> None:
        x = args["input"]
        view = self.val(x).view
        dims = self.static(args.get("dim"))
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        stored = sorted(-1 if view.stored_dim(d) is None else view.stored_dim(d) for d in dims)
        if len(view.stored) != 4 or stored != [2, 3] or not (view.is_identity or view.channels_last()):
            raise Unsupported(f"mean over dims {dims} of a tensor of shape {view.shape} (only the image's)")
        src = self.stored(x)
        pooled = View.of((*self.plan_shapes[src][:2], 1, 1))
        g = self.emit(Op.GLOBAL_AVGPOOL, n.name, (src,), pooled.shape)
        seen = pooled if view.is_identity else pooled.permute((0, 2, 3, 1))
        self.vals[n.name] = Val(g, seen.reshape(self.shape(n)))

    # -- layout -----------------------------------------------------------------------------------
    def op_reshape(self, n, mod, args) -> None:
        v = self.val(args["input"])
        if v.pads is not None:
            self.stored(args["input"])
            v = self.val(args["input"])
        self.vals[n.name] = Val(v.name, v.view.reshape(self.shape(n)))

    def op_flatten(self, n, mod, args) -> None:
        self.op_reshape(n, mod, {"input": args["input"]})

    def op_expand(self, n, mod, args) -> None:
        v = self.val(args["input"])
        if v.view.shape != self.shape(n):
            raise Unsupported(f"expanding {v.view.shape} to {self.shape(n)} (a broadcasting multiply "
                              "needs no expand: write x * s)")  # fmt: skip
        self.vals[n.name] = v

    def op_permute(self, n, mod, args) -> None:
        v = self.val(args["input"])
        dims = self.static(args["dims"])
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        if v.pads is not None:
            self.stored(args["input"])
            v = self.val(args["input"])
        self.vals[n.name] = Val(v.name, v.view.permute(dims))

    def op_transpose(self, n, mod, args) -> None:
        v = self.val(args["input"])
        if v.pads is not None:
            self.stored(args["input"])
            v = self.val(args["input"])
        dims = self.static(args["dim0"]), self.static(args["dim1"])
        self.vals[n.name] = Val(v.name, v.view.transpose(*dims))

    def op_cat(self, n, mod, args) -> None:
        tensors = args["tensors"]
        dim = self.static(args.get("dim", 0))
        shape = self.shape(n)
        if len(shape) not in (2, 4) or dim % len(shape) != 1:
            raise Unsupported(f"concatenation along dim {dim} of {len(shape)}-d tensors (only channels)")
        names = tuple(self.plain(t) for t in tensors)
        self.set(n, self.emit(Op.CONCAT, n.name, names, shape))

    def _slice(self, n, src_fx, dim: int, start: int, stop: int) -> None:
        shape = self.val(src_fx).view.shape
        if dim % len(shape) != 1 or len(shape) not in (2, 4):
            raise Unsupported(f"slicing dim {dim} of a {len(shape)}-d tensor (only channels)")
        if (start, stop) == (0, shape[1]):
            self.vals[n.name] = self.val(src_fx)
            return
        x = self.plain(src_fx)
        out_shape = (shape[0], stop - start, *shape[2:])
        self.set(n, self.emit(Op.SLICE, n.name, (x,), out_shape, attrs=SliceAttrs(start, stop)))

    def op_chunk(self, n, mod, args) -> None:
        self._pieces(n, args, self.static(args.get("dim", 0)))

    def op_split(self, n, mod, args) -> None:
        self._pieces(n, args, self.static(args.get("dim", 0)))

    def _pieces(self, n, args, dim: int) -> None:
        src = args.get("input", args.get("tensor"))
        shapes = self.values[n.name]
        self.val(src)
        self.pieces[n.name] = (src, dim, [s[dim] for s in shapes])

    def op_getitem(self, n, mod, args) -> None:
        src, index = args["input"], args["index"]
        if isinstance(src, fx.Node) and src.name in self.pieces:
            whole, dim, sizes = self.pieces[src.name]
            i = self.static(index)
            start = sum(sizes[:i])
            return self._slice(n, whole, dim, start, start + sizes[i])
        index = self.static(index)
        index = index if isinstance(index, tuple) else (index,)
        shape = self.val(src).view.shape
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (len(shape) - len(index) + 1) + index[at + 1 :]
        sliced = [(d, s) for d, s in enumerate(index) if s != slice(None)]
        if len(sliced) != 1 or not isinstance(sliced[0][1], slice) or sliced[0][1].step not in (None, 1):
            raise Unsupported(f"indexing with {index!r} (only a channel range x[:, a:b] is supported)")
        d, s = sliced[0]
        start, stop, _ = s.indices(shape[d])
        self._slice(n, src, d, start, stop)

    # -- modern-network ops -----------------------------------------------------------------------
    def op_pad(self, n, mod, args) -> None:
        if mod is not None:
            pads = pad_module_pads(mod)
            if pads is None:
                raise Unsupported(f"{type(mod).__name__} with a non-zero value (only zero padding)")
        else:
            options = {k: self.static(v) for k, v in args.items() if k in ("mode", "value")}
            pads = pad_call_pads((None, self.static(args.get("pad"))), options)
            if isinstance(pads, str):
                raise Unsupported(pads)
        x = self.nchw(args["input"])
        self.vals[n.name] = Val(x, View.of(self.shape(n)), pads)

    def op_interpolate(self, n, mod, args) -> None:
        if mod is not None:
            mode, align, factor = mod.mode, mod.align_corners, mod.scale_factor
            recompute = getattr(mod, "recompute_scale_factor", None)
        else:
            mode = self.static(args.get("mode", "nearest"))
            align, factor = self.static(args.get("align_corners")), self.static(args.get("scale_factor"))
            recompute = self.static(args.get("recompute_scale_factor"))
            if self.static(args.get("antialias", False)):
                raise Unsupported("interpolate with antialias")
        if mode not in ("nearest", "bilinear"):
            raise Unsupported(f"interpolate mode {mode!r} (only 'nearest' and 'bilinear')")
        x = self.nchw(args["input"])
        (h, w), (oh, ow) = self.plan_shapes[x][2:], self.shape(n)[2:]
        if factor is not None and not recompute:  # torch then maps with 1/factor, not in/out
            fh, fw = tuple(factor) if isinstance(factor, (tuple, list)) else (factor, factor)
            if h * fh != oh or w * fw != ow:
                raise Unsupported(f"interpolate by {factor} from {h}x{w} (the factor must give a whole size)")
        attrs = ResizeAttrs((oh, ow), mode, bool(align) if mode == "bilinear" else False)
        self.set(n, self.emit(Op.RESIZE, n.target if mod is not None else n.name, (x,), self.shape(n),
                              attrs=attrs))  # fmt: skip

    def op_layer_norm(self, n, mod, args) -> None:
        x = args["input"]
        view = self.val(x).view
        if mod is not None:
            shape, eps = tuple(mod.normalized_shape), mod.eps
            weight, bias = mod.weight, mod.bias
        else:
            shape = self.static(args.get("normalized_shape"))
            shape = (shape,) if isinstance(shape, int) else tuple(shape)
            eps = self.static(args.get("eps", 1e-5))
            weight = self.param(args["weight"]) if args.get("weight") is not None else None
            bias = self.param(args["bias"]) if args.get("bias") is not None else None
        c = view.shape[-1]
        if len(shape) != 1 or shape[0] != c or view.stored_dim(-1) != 1:
            raise Unsupported(f"layer norm over {shape} of a tensor of shape {view.shape} (only over the "
                              "channels: channels-last (N, H, W, C), or (N, C))")  # fmt: skip
        src = self.stored(x)
        base = self.unique(n.target if mod is not None else n.name)
        scale = weight.detach() if weight is not None else torch.ones(c)
        shift = bias.detach() if bias is not None else torch.zeros(c)
        weights = (self.const(f"{base}.scale", scale), self.const(f"{base}.shift", shift))
        out = self.emit(Op.LAYERNORM, base, (src,), self.plan_shapes[src], weights=weights,
                        attrs=NormAttrs(float(eps)), exact=True)  # fmt: skip
        self.set(n, out, view)

    def op_batch_norm(self, n, mod, args) -> None:
        x = self.nchw(args["input"])
        scale, shift = bn_affine(mod)
        base = self.unique(n.target)
        weights = (self.const(f"{base}.scale", scale), self.const(f"{base}.shift", shift))
        self.set(n, self.emit(Op.AFFINE, base, (x,), self.plan_shapes[x], weights=weights, exact=True))

    def op_linear(self, n, mod, args) -> None:
        x = args["input"]
        view = self.val(x).view
        if mod is not None:
            weight, bias, base = mod.weight.detach(), mod.bias, self.unique(n.target)
        else:
            weight = self.param(args["weight"])
            bias = self.param(args["bias"]) if args.get("bias") is not None else None
            base = self.unique(n.name)
        fout, fin = weight.shape
        w = (self.const(f"{base}.w", weight),)
        epi = Epilogue(bias=self.const(f"{base}.bias", bias) if bias is not None else None)
        if len(view.shape) == 2:
            src = self.plain(x)
            in_shape = self.plan_shapes[src]
            out = self.emit(Op.LINEAR, base, (src,), (in_shape[0], fout), weights=w, epilogue=epi, exact=True)
            self.layers[out] = LayerInfo(out, "linear", (fout, fin), in_shape, (in_shape[0], fout))
            return self.set(n, out)
        if not view.channels_last():
            raise Unsupported(f"linear on a tensor of shape {view.shape} (only (N, F), or channels-last "
                              "(N, H, W, C) after x.permute(0, 2, 3, 1))")  # fmt: skip
        src = self.stored(x)
        nb, c, h, wd = self.plan_shapes[src]
        out = self.emit(Op.MATMUL, base, (src,), (nb, fout, h, wd), weights=w, attrs=MatmulAttrs(fin, fout),
                        epilogue=epi, exact=True)  # fmt: skip
        self.layers[out] = LayerInfo(out, "linear", (fout, fin), (nb, c, h, wd), (nb, fout, h, wd))
        self.set(n, out, View.of((nb, fout, h, wd)).permute((0, 2, 3, 1)))
