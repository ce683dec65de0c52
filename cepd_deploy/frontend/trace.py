"""torch.fx tracing for the lowering: leaf modules, static shapes and values, source locations.

Convs (``nn.Conv2d`` and every subclass, CEPD convs) stay whole: a subclass's own ``forward``
(a pad, then ``F.conv2d`` on its weight) is read by :mod:`cepd_deploy.frontend.convs`. Shape
arithmetic in ``forward`` (``x.size(0)``, ``x.shape[-2:]``, ``h // 2``) is evaluated once with
the static input shape: :func:`interpret` records every node's tensor shape or Python value.
"""

from __future__ import annotations

import math
import re

import torch
import torch.fx as fx
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.model.layers import CEPDConv2d

#: largest input (values) run for real when the meta-device trace fails (1 GiB of float32)
REAL_TRACE_LIMIT = 1 << 28


class Tracer(fx.Tracer):
    """Keeps convs whole and records, on every node, the module path it was traced in."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True
        self._path: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (CEPDConv2d, nn.Conv2d)) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self._path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._path.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["cepd_module"] = self._path[-1] if self._path else ""
        return node


def trace(model: nn.Module) -> fx.GraphModule:
    """fx-trace a model in eval mode (training-only branches drop out), convs kept whole."""
    was_training = model.training
    model.eval()
    try:
        return fx.GraphModule(model, Tracer().trace(model))
    except CEPDError:
        raise
    except Exception as exc:  # fx raises many types (control flow on tensors, untraceable calls)
        raise CEPDError(f"cannot trace {type(model).__name__} with torch.fx: {first_line(exc)}") from None
    finally:
        model.train(was_training)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), at most ``limit`` characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n(?:\s+(.*))?')


def where(node: fx.Node) -> str:
    """``module path (file:line: code)`` of the user's source that made ``node``, for errors."""
    module = node.meta.get("cepd_module") or (node.target if node.op == "call_module" else "")
    place = ""
    for path, line, _, code in _FRAME.findall(node.meta.get("stack_trace") or ""):
        if "/torch/" not in path.replace("\\", "/"):
            short = path.replace("\\", "/").rsplit("/", 1)[-1]
            place = f"{short}:{line}" + (f": {code.strip()}" if code and code.strip() else "")
            break
    parts = [f"in {module!r}" if module else "in the model's forward", f"at {place}" if place else ""]
    return " ".join(p for p in parts if p)


class Interp(fx.Interpreter):
    """Runs the graph once and records every node's output: a tensor's shape, or the Python value
    (int, tuple, torch.Size...) of shape arithmetic. With ``meta`` nothing is computed: weights and
    inputs live on the meta device and CEPD convs get their shape by formula."""

    def __init__(self, gm: fx.GraphModule, meta: bool) -> None:
        super().__init__(gm)
        self.meta = meta
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.values: dict[str, object] = {}

    def record(self, input_shape: tuple[int, ...]) -> None:
        self.run(torch.zeros(input_shape, device="meta" if self.meta else "cpu"))

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape)
        elif isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
            self.values[n.name] = tuple(tuple(t.shape) for t in out)  # chunk/split: the pieces' shapes
        else:
            self.values[n.name] = out
        return out

    def fetch_attr(self, target: str):
        value = super().fetch_attr(target)
        return value.to("meta") if self.meta and isinstance(value, torch.Tensor) else value

    def call_module(self, target, args, kwargs):
        if not self.meta:
            return super().call_module(target, args, kwargs)
        mod = self.module.get_submodule(target)
        if isinstance(mod, CEPDConv2d):
            return torch.empty(cepd_out_shape(mod, tuple(args[0].shape)), device="meta")
        from torch.func import functional_call

        state = {k: v.to("meta") for k, v in (*mod.named_parameters(), *mod.named_buffers())}
        return functional_call(mod, state, args, kwargs)


def interpret(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> Interp:
    """Every node's shape or value for ``input_shape`` (eval mode).

    On the meta device (no memory, no arithmetic, whatever the batch or image size); a model with
    an op the meta device lacks runs once on real zeros instead, if the input is at most
    ``REAL_TRACE_LIMIT`` values.
    """
    was_training = gm.training
    gm.eval()
    try:
        for meta in (True, False):
            try:
                with torch.no_grad():
                    interp = Interp(gm, meta=meta)
                    interp.record(input_shape)
                return interp
            except CEPDError:
                raise
            except Exception as exc:  # meta: an op without a meta kernel, data-dependent Python
                why = first_line(exc, 200 if meta else 300)
                if not meta:
                    raise CEPDError(f"model does not accept input shape {input_shape}: {why}") from None
                if math.prod(input_shape) > REAL_TRACE_LIMIT:  # too large to run for real
                    raise CEPDError(f"cannot trace the shapes of input {input_shape} without running the "
                                    f"model, and it is too large to run ({why})") from None  # fmt: skip
        raise AssertionError("unreachable")
    finally:
        gm.train(was_training)


def cepd_out_shape(conv: CEPDConv2d, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, O, H', W') of a CEPD conv for an (N, I, H, W) input (the usual conv formula); a
    channels-last layer maps (N, H, W, I) to (N, H', W', O)."""
    if conv.channels_last and len(in_shape) == 4:
        n, o, h, w = cepd_out_shape_nchw(conv, (in_shape[0], in_shape[3], *in_shape[1:3]))
        return (n, h, w, o)
    return cepd_out_shape_nchw(conv, in_shape)


def cepd_out_shape_nchw(conv: CEPDConv2d, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, O, H', W') of a CEPD conv's computation on an (N, I, H, W) input."""
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
