"""What the native kernel runs: one typed description of a layer (:class:`KernelLayer`).

Built from a Plan's :class:`~cepd_deploy.plan.ir.CEPDBlock` (or, for a dense 1x1 conv the
custom-op library moves onto the kernel, from its shapes), it says whether the kernel runs the
layer (:meth:`KernelLayer.unsupported`) and gives the int64 lists the C ABI takes: the
``cepd_tts_create`` descriptor (:meth:`KernelLayer.desc`, the fused node's ``native_desc``) and
the custom-op library's reference-path descriptor (:meth:`KernelLayer.ref_desc`). Its JSON form
(:meth:`KernelLayer.to_json`) is the fused node's ``structure`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import CEPDBlock, ConvAttrs, MatmulAttrs, Node, PermuteAttrs

Pair = tuple[int, int]
#: A chain step: a contraction (conv or matmul on a folded view) or a permute of the channel axes.
Step = ConvAttrs | MatmulAttrs | PermuteAttrs

#: activation -> the descriptor's code
ACTS = {"": 0, "relu": 1, "relu6": 2}
#: version of the ``ref_desc`` layout (the library refuses others)
REF_VERSION = 1
_REF_OPS = {MatmulAttrs: 0, ConvAttrs: 1, PermuteAttrs: 2}
_STEP_OPS = {MatmulAttrs: "matmul", ConvAttrs: "conv", PermuteAttrs: "permute"}


def _pair(v) -> Pair:
    return int(v[0]), int(v[1])


@dataclass(frozen=True)
class Window:
    """A conv window (the sparse branch's)."""

    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)

    @classmethod
    def of(cls, a: ConvAttrs) -> Window:
        return cls(_pair(a.kernel), _pair(a.stride), _pair(a.padding), _pair(a.dilation))

    def ints(self) -> list[int]:
        return [*self.kernel, *self.stride, *self.padding, *self.dilation]


def _conv_step(a: ConvAttrs) -> ConvAttrs:
    return ConvAttrs(_pair(a.kernel), _pair(a.stride), _pair(a.padding), _pair(a.dilation), int(a.groups),
                     int(a.outer), int(a.cin), int(a.cout))  # fmt: skip


def _step(a) -> Step:
    if isinstance(a, ConvAttrs):
        return _conv_step(a)
    if isinstance(a, MatmulAttrs):
        return MatmulAttrs(int(a.cin), int(a.cout), int(a.outer), int(a.inner))
    if isinstance(a, PermuteAttrs):
        return PermuteAttrs(tuple(int(v) for v in a.axes), tuple(int(v) for v in a.perm))
    raise CEPDError(f"a TTSparseConv chain step must be a conv, matmul or permute, not {type(a).__name__}")


@dataclass(frozen=True)
class KernelLayer:
    """One layer for the kernel: y = act(scale * (chain(x') + scatter(S(x'))) + bias + residual),
    x' the input subsampled by ``subsample`` (a strided 1x1 layer) or the input itself.

    Shapes are (N, C, H, W); ``steps`` the chain in order; ``kappa`` the sparse branch's filters
    (``sparse`` their window, None without them); ``scale`` / ``bias`` / ``residual`` / ``act``
    the epilogue.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    steps: tuple[Step, ...]
    subsample: Pair = (1, 1)
    kappa: int = 0
    sparse: Window | None = None
    scale: bool = False
    bias: bool = False
    residual: bool = False
    act: str = ""

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_block(cls, block: CEPDBlock) -> KernelLayer:
        """The kernel's view of a CEPD block of a Plan (its epilogue included)."""
        if not block.steps:
            raise CEPDError(f"layer {block.layer!r} has no TT chain")
        sub, s, e = block.subsample, block.sparse, block.epilogue
        return cls(
            in_shape=tuple(block.nodes[0].in_shapes[0]),
            out_shape=tuple(block.last.out_shape),
            steps=tuple(_step(n.attrs) for n in block.steps),
            subsample=_pair(sub.attrs.stride) if sub is not None else (1, 1),
            kappa=block.kappa,
            sparse=Window.of(s.attrs) if s is not None else None,
            scale=bool(e.scale),
            bias=bool(e.bias),
            residual=e.residual,
            act=e.act or "",
        )

    @classmethod
    def from_conv(cls, node: Node, subsample: Pair = (1, 1)) -> KernelLayer:
        """A dense CONV node (and its epilogue) as a one-step layer."""
        if not isinstance(node.attrs, ConvAttrs):
            raise CEPDError(f"{node.name}: not a conv")
        e = node.epilogue
        return cls(tuple(node.in_shapes[0]), tuple(node.out_shape), (_conv_step(node.attrs),),
                   _pair(subsample), scale=bool(e.scale), bias=bool(e.bias), residual=e.residual,
                   act=e.act or "")  # fmt: skip

    @classmethod
    def from_json(cls, st: dict) -> KernelLayer:
        """The layer a :meth:`to_json` dict (a fused node's ``structure``) describes."""
        steps = []
        for s in st["steps"]:
            if s["op"] == "permute":
                steps.append(PermuteAttrs(tuple(s["axes"]), tuple(s["perm"])))
            elif s["op"] == "matmul":
                steps.append(MatmulAttrs(s["cin"], s["cout"], s["outer"], s["inner"]))
            elif s["op"] == "conv":
                steps.append(ConvAttrs(s["kernel"], s["stride"], s["padding"], s["dilation"], s["groups"],
                                       s["outer"], s["cin"], s["cout"]))  # fmt: skip
            else:
                raise CEPDError(f"unknown TTSparseConv step {s['op']!r}")
        sc = st["s_conv"]
        window = Window(*(_pair(sc[k]) for k in ("kernel", "stride", "padding", "dilation"))) if sc else None
        return cls(
            in_shape=tuple(int(v) for v in st["in_shape"]),
            out_shape=tuple(int(v) for v in st["out_shape"]),
            steps=tuple(_step(s) for s in steps),
            subsample=_pair(st["subsample"]),
            kappa=int(st["kappa"]),
            sparse=window,
            scale=bool(st["scale"]),
            bias=bool(st["bias"]),
            residual=bool(st["residual"]),
            act=str(st["act"]),
        )

    # -- views -----------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The layer as plain JSON (the fused node's ``structure`` attribute)."""
        sc = self.sparse
        return {
            "kappa": self.kappa, "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
            "subsample": list(self.subsample),
            "s_conv": {"kernel": list(sc.kernel), "stride": list(sc.stride), "padding": list(sc.padding),
                       "dilation": list(sc.dilation)} if sc else None,
            "steps": [_step_json(s) for s in self.steps], "scale": self.scale, "bias": self.bias,
            "residual": self.residual, "act": self.act,
        }  # fmt: skip

    @property
    def convs(self) -> tuple[ConvAttrs, ...]:
        return tuple(s for s in self.steps if isinstance(s, ConvAttrs))

    @property
    def weight_count(self) -> int:
        """How many weight tensors the kernel takes: the contractions', then S (if kappa > 0),
        then scale and bias (if the epilogue has them)."""
        contractions = sum(not isinstance(s, PermuteAttrs) for s in self.steps)
        return contractions + (self.kappa > 0) + self.scale + self.bias

    def unsupported(self) -> str | None:
        """Why the kernel does not run this layer, or None if it does.

        It runs chains of matmul/conv steps on unfolded views (no permute, no folding), at most
        one (ungrouped) conv step, whose window is the sparse branch's.
        """
        for s in self.steps:
            if isinstance(s, PermuteAttrs) or s.outer != 1 or (isinstance(s, MatmulAttrs) and s.inner != 1):
                return "a chain step needs a permute or a folded view"
        convs = self.convs
        if len(convs) > 1 or any(c.groups != 1 for c in convs):
            return "more than one (or a grouped) conv step"
        if self.act not in ACTS:
            return f"activation {self.act!r}"
        sc = self.sparse
        if sc is not None and convs and sc != Window.of(convs[0]):
            return "the sparse branch's window differs from the conv step's"
        if sc is not None and not convs and (sc.kernel, sc.stride, sc.padding) != ((1, 1), (1, 1), (0, 0)):
            return "a windowed sparse branch without a conv step"
        return None

    def desc(self) -> list[int]:
        """The ``cepd_tts_create`` descriptor (the fused node's ``native_desc``): C, H, W of the input
        and of the output, subsample (2), the conv step's window (8; 1x1 without one), the number of
        steps, kappa, scale, bias, residual, act; then per step: is-conv, cin, cout. Raises
        CEPDError where the kernel does not run the layer."""
        why = self.unsupported()
        if why is not None:
            raise CEPDError(f"TTSparseConv layer not supported natively: {why}")
        convs = self.convs
        geom = Window.of(convs[0]).ints() if convs else Window().ints()
        if self.subsample != (1, 1) and geom[2:4] != [1, 1]:
            raise CEPDError("a subsampled layer must have a stride-1 conv step")
        desc = [*self.in_shape[1:], *self.out_shape[1:], *self.subsample, *geom, len(self.steps), self.kappa,
                int(self.scale), int(self.bias), int(self.residual), ACTS[self.act]]  # fmt: skip
        for s in self.steps:
            desc += [int(isinstance(s, ConvAttrs)), s.cin, s.cout]
        return [int(v) for v in desc]

    def ref_desc(self) -> list[int]:
        """The ``ref_desc`` attribute of a fused node the kernel does not run: the whole layer as
        int64s, so the custom-op library runs it by its reference path (the function body's ops in
        plain loops) instead of refusing the model.

        Layout: version, I, H, W, O, Ho, Wo, subsample (2), kappa, scale, bias, residual, act, the
        sparse branch's window (kernel, stride, padding, dilation: 8), the number of steps; then per
        step its op (0 matmul, 1 conv, 2 permute) and fields: matmul outer, cin, cout, inner; conv
        outer, cin, cout, kernel, stride, padding, dilation (8), groups; permute k, axes (k), perm (k).
        """
        if self.act not in ACTS:
            raise CEPDError(f"TTSparseConv: activation {self.act!r} has no descriptor")
        window = (self.sparse or Window()).ints()
        desc = [REF_VERSION, *self.in_shape[1:], *self.out_shape[1:], *self.subsample, self.kappa,
                int(self.scale), int(self.bias), int(self.residual), ACTS[self.act], *window,
                len(self.steps)]  # fmt: skip
        for s in self.steps:
            desc.append(_REF_OPS[type(s)])
            if isinstance(s, MatmulAttrs):
                desc += [s.outer, s.cin, s.cout, s.inner]
            elif isinstance(s, ConvAttrs):
                desc += [s.outer, s.cin, s.cout, *Window.of(s).ints(), s.groups]
            else:
                desc += [len(s.axes), *s.axes, *s.perm]
        return [int(v) for v in desc]


def _step_json(s: Step) -> dict:
    if isinstance(s, PermuteAttrs):
        return {"op": "permute", "axes": list(s.axes), "perm": list(s.perm)}
    inner = s.inner if isinstance(s, MatmulAttrs) else 1
    step = {"op": _STEP_OPS[type(s)], "outer": s.outer, "cin": s.cin, "cout": s.cout, "inner": inner}
    if isinstance(s, ConvAttrs):
        step.update(kernel=list(s.kernel), stride=list(s.stride), padding=list(s.padding),
                    dilation=list(s.dilation), groups=s.groups)  # fmt: skip
    return step
