"""Hand-built Plans for target tests: every op of the modern-network set, without the front end.

``modern_plan()`` is a small network (input 1x8x8x8) that uses ACT (every kind), MUL (broadcast
and same-shape), SLICE, PAD, RESIZE (every mode) and LAYERNORM, next to CONV, CONCAT, pooling and
LINEAR, so a target's handlers can be checked against the reference interpreter.
"""

from __future__ import annotations

import numpy as np

from cepd_deploy.plan.ir import (
    ACTIVATIONS,
    ActAttrs,
    ConvAttrs,
    Epilogue,
    NoAttrs,
    Node,
    NormAttrs,
    Op,
    PadAttrs,
    Plan,
    ResizeAttrs,
    SliceAttrs,
)
from cepd_deploy.plan.verify import verify


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def const(self, name: str, shape: tuple[int, ...], scale: float = 0.3, offset: float = 0.0) -> str:
        self.consts[name] = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        return name

    def add(self, op: Op, name: str, inputs: tuple[str, ...], out_shape: tuple[int, ...], **kw) -> str:
        shapes = tuple(self.shapes[x] for x in inputs)
        node = Node(op, name, inputs, name, shapes, out_shape, layer=name, **kw)
        self.nodes.append(node)
        self.shapes[name] = out_shape
        return name


def modern_plan(seed: int = 0) -> Plan:
    """Every modern-network op in one verified Plan (input ``x`` of shape (1, 8, 8, 8))."""
    b = _Builder(seed)
    b.shapes["x"] = (1, 8, 8, 8)
    pad = b.add(Op.PAD, "pad", ("x",), (1, 8, 10, 10), attrs=PadAttrs((1, 1, 0, 2)))
    conv = b.add(Op.CONV, "conv", (pad,), (1, 8, 8, 8), weights=(b.const("conv.w", (8, 8, 3, 3), 0.2),),
                 attrs=ConvAttrs((3, 3), cin=8, cout=8),
                 epilogue=Epilogue(bias=b.const("conv.b", (8,))))  # fmt: skip
    a = b.add(Op.ACT, "silu", (conv,), (1, 8, 8, 8), attrs=ActAttrs("silu"))
    # squeeze-excitation: x * hardsigmoid(fc(gap(x)))
    g = b.add(Op.GLOBAL_AVGPOOL, "gap", (a,), (1, 8, 1, 1))
    fc = b.add(Op.CONV, "se.fc", (g,), (1, 8, 1, 1), weights=(b.const("se.w", (8, 8, 1, 1)),),
               attrs=ConvAttrs((1, 1), cin=8, cout=8),
               epilogue=Epilogue(bias=b.const("se.b", (8,))))  # fmt: skip
    gate = b.add(Op.ACT, "gate", (fc,), (1, 8, 1, 1), attrs=ActAttrs("hardsigmoid"))
    se = b.add(Op.MUL, "se", (a, gate), (1, 8, 8, 8), attrs=NoAttrs())
    # a channel split, two activations, joined again
    lo = b.add(Op.SLICE, "lo", (se,), (1, 3, 8, 8), attrs=SliceAttrs(0, 3))
    hi = b.add(Op.SLICE, "hi", (se,), (1, 5, 8, 8), attrs=SliceAttrs(3, 8))
    lo = b.add(Op.ACT, "gelu", (lo,), (1, 3, 8, 8), attrs=ActAttrs("gelu"))
    hi = b.add(Op.ACT, "hardswish", (hi,), (1, 5, 8, 8), attrs=ActAttrs("hardswish"))
    cat = b.add(Op.CONCAT, "cat", (lo, hi), (1, 8, 8, 8))
    ln = b.add(Op.LAYERNORM, "ln", (cat,), (1, 8, 8, 8), attrs=NormAttrs(1e-6),
               weights=(b.const("ln.scale", (8,), 0.2, 1.0), b.const("ln.shift", (8,), 0.1)))  # fmt: skip
    y = b.add(Op.ACT, "prelu", (ln,), (1, 8, 8, 8), attrs=ActAttrs("prelu"),
              weights=(b.const("prelu.slope", (8,), 0.1, 0.25),))  # fmt: skip
    y = b.add(Op.ACT, "leaky", (y,), (1, 8, 8, 8), attrs=ActAttrs("leaky_relu", 0.1))
    t = b.add(Op.ACT, "tanh", (y,), (1, 8, 8, 8), attrs=ActAttrs("tanh"))
    s = b.add(Op.ACT, "sigmoid", (y,), (1, 8, 8, 8), attrs=ActAttrs("sigmoid"))
    y = b.add(Op.MUL, "mul", (t, s), (1, 8, 8, 8))
    # segmentation-head resizes: every mode
    y = b.add(Op.RESIZE, "up", (y,), (1, 8, 12, 12), attrs=ResizeAttrs((12, 12), "bilinear"))
    y = b.add(Op.RESIZE, "down", (y,), (1, 8, 6, 6), attrs=ResizeAttrs((6, 6), "nearest"))
    y = b.add(Op.RESIZE, "corners", (y,), (1, 8, 9, 9), attrs=ResizeAttrs((9, 9), "bilinear", True))
    g = b.add(Op.GLOBAL_AVGPOOL, "pool", (y,), (1, 8, 1, 1))
    f = b.add(Op.FLATTEN, "flat", (g,), (1, 8))
    out = b.add(Op.LINEAR, "fc", (f,), (1, 5), weights=(b.const("fc.w", (5, 8)),),
                epilogue=Epilogue(bias=b.const("fc.b", (5,))))  # fmt: skip
    plan = Plan("x", (1, 8, 8, 8), out, b.nodes, b.consts)
    assert {n.attrs.kind for n in plan.nodes if n.op is Op.ACT} == set(ACTIVATIONS)
    verify(plan)
    return plan
