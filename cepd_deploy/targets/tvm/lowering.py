"""Plan -> Relax IRModule: every Plan op becomes a ``call_tir`` of one of our kernels.

Handlers (``HANDLERS``, op -> method) build a :class:`~cepd_deploy.targets.tvm.kernel.Call`
per node; identical kernels are emitted once. The Plan is lowered as given (the target's passes,
``merge_pointwise``, ran before). Each CEPD layer (:meth:`Plan.blocks`) is fused on the way:

* the S branch's conv gets one extra, all-zero output row, so a scatter-add becomes a gather
  ``y[o] += s[inv[o]]`` with ``inv[o]`` = that zero row for channels the branch does not touch;
* the scatter-add is folded into the epilogue of the TT chain's last step when that step is a
  MATMUL/CONV read by nothing else (it writes ``W x + s[inv] + bias``, residual, act);
* a two-step 1x1 chain with a 1x1 S branch computes the branch with its first step: one GEMM
  ``[W_first; W_s; 0]`` on the shared input.

An ACT (SiLU, hard-swish, PReLU, ...) whose input is written by an op with an epilogue (and read
by nothing else) is applied in that epilogue, as ReLU is; otherwise it is its own elementwise
kernel. MUL, SLICE, PAD, RESIZE and LAYERNORM are kernels of their own
(:mod:`~cepd_deploy.targets.tvm.simple`); a RESIZE gathers through index and weight tables
computed at lowering time as torch computes its source pixels.

``arch="x86"`` picks the register tilings and attaches our schedules; ``arch="gpu"`` emits the
plain computes for the GPU schedules (:mod:`cepd_deploy.targets.tvm.gpu`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import tvm
from tvm import relax

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.ir import (
    EPILOGUE_OPS,
    ActAttrs,
    CEPDBlock,
    ConvAttrs,
    MatmulAttrs,
    Node,
    NormAttrs,
    Op,
    PadAttrs,
    PermuteAttrs,
    Plan,
    PoolAttrs,
    ReluAttrs,
    ResizeAttrs,
    Role,
    ScatterAttrs,
    SliceAttrs,
)
from cepd_deploy.plan.passes import is_pointwise
from cepd_deploy.targets.tvm import conv as convk
from cepd_deploy.targets.tvm import gemm as gemmk
from cepd_deploy.targets.tvm import simple
from cepd_deploy.targets.tvm.kernel import Call, Epi, EpiValues, Kernel

_GEMM_PLAIN = gemmk.Tiling("p", 1, 1)
_CONV_PLAIN = convk.ConvTiling("plain")

PrimFuncFor = Callable[[Kernel], tvm.tirx.PrimFunc]


class Lowering:
    """One Plan lowered for one architecture (``x86`` or ``gpu``)."""

    def __init__(
        self, plan: Plan, *, arch: str = "x86", simd: int = 16, prim_func: PrimFuncFor | None = None
    ):
        self.plan = plan
        self.arch, self.simd = arch, simd
        self.prim_func = prim_func or (Kernel.scheduled if arch == "x86" else Kernel.workload)
        self.bb = relax.BlockBuilder()
        self.env: dict[str, relax.Expr] = {}
        self.row_offset: dict[str, int] = {}  # value -> its first row inside a shared buffer
        self.kernels: dict[str, tuple[relax.GlobalVar, Kernel]] = {}
        self.uses: Counter[str] = Counter()  # kernel key -> call count
        self.producer = plan.producer()
        self.uses_of = plan.readers()  # value -> how many inputs read it
        self.extended: dict[str, int] = {}  # S-branch node -> its rows (kappa), emitted with a zero row
        self.folded: dict[str, Node] = {}  # the chain's last step -> the SCATTER_ADD folded into it
        self.joined: dict[str, Node] = {}  # first 1x1 step -> the 1x1 S branch computed with it
        self.acts: dict[str, Node] = {}  # a node with an epilogue -> the ACT applied in it
        for block in plan.blocks():
            self._fuse(block)
        for node in plan.nodes:
            src = self.producer.get(node.inputs[0]) if node.op is Op.ACT else None
            if (
                src is not None
                and src.op in EPILOGUE_OPS
                and src.epilogue.act is None
                and self.uses_of[src.output] == 1
            ):
                self.acts[src.name] = node

    def _private(self, node: Node | None, value: str, test: Callable[[Node], bool] | None = None) -> bool:
        """Whether ``node`` writes ``value`` as a contraction (CONV/MATMUL) without epilogue that
        nothing else reads, and passes ``test`` (default: on an unfolded view)."""
        return (
            node is not None
            and node.output == value
            and node.op in (Op.CONV, Op.MATMUL)
            and node.epilogue.empty
            and self.uses_of[value] == 1
            and (test or _unfolded)(node)
        )

    def _fuse(self, block: CEPDBlock) -> None:
        """Record how ``block``'s S branch and scatter-add are emitted (see the module docstring)."""
        sc, s_node = block.scatter, block.sparse
        if sc is None or not self._private(s_node, sc.inputs[1]):
            return
        self.extended[s_node.name] = sc.in_shapes[1][1]
        last = self.producer.get(block.chain_output)
        if last is None or last.role is not Role.STEP or not self._private(last, block.chain_output):
            return
        self.folded[last.name] = sc
        steps = (n for n in block.steps if n.role is Role.STEP)
        first = next((n for n in steps if n.inputs[0] == block.branch_input), None)
        if (
            first is not None
            and first is not last
            and last.inputs[0] == first.output
            and is_pointwise(last)
            and is_pointwise(s_node)
            and s_node.inputs[0] == first.inputs[0]
            and self._private(first, first.output, is_pointwise)
        ):
            self.joined[first.name] = s_node  # one GEMM: [W_first; W_s; 0] on the shared input

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> tvm.IRModule:
        p = self.plan
        x = relax.Var(p.input, relax.TensorType(p.input_shape, "float32"))
        with self.bb.function("main", [x]):
            with self.bb.dataflow():
                self.env[p.input] = x
                skip = set(self.folded) | {n.name for n in (*self.joined.values(), *self.acts.values())}
                for node in p.nodes:
                    if node.name in skip:
                        continue  # emitted by the SCATTER_ADD that consumes it / with its first step /
                        # in the epilogue of its input's producer
                    self.env[node.output] = HANDLERS[node.op](self, node)
                    if node.name in self.acts:
                        self.env[self.acts[node.name].output] = self.env[node.output]
                out = self.bb.emit_output(self.env[p.output])
            self.bb.emit_func_output(out)
        return self.bb.get()

    def emit(self, call: Call, runtime: list[relax.Expr], out_shape) -> relax.Expr:
        """call_tir of a kernel (reshaping inputs to its views), reshaped to ``out_shape``."""
        k = call.kernel
        if k.key not in self.kernels:
            gv = self.bb.add_func(self.prim_func(k), f"k{len(self.kernels)}_{k.key.split('_')[0]}")
            self.kernels[k.key] = (gv, k)
        self.uses[k.key] += 1
        gv = self.kernels[k.key][0]
        args = [self._view(e, t.shape) for e, t in zip(runtime, k.inputs, strict=True)]
        args += [relax.const(v) for v in call.consts]
        shape = tuple(int(s) for s in k.output.shape)
        y = self.bb.emit(relax.call_tir(gv, args, relax.TensorType(shape, "float32")))
        return self._view(y, out_shape)

    def _view(self, e: relax.Expr, shape) -> relax.Expr:
        shape = tuple(int(s) for s in shape)
        cur = tuple(int(s) for s in e.ty.shape)
        return e if cur == shape else self.bb.emit(relax.op.reshape(e, shape))

    # -- epilogues ------------------------------------------------------------------------
    def epilogue(self, node: Node, *, outer: int = 1, scatter: Node | None = None):
        """(Epi, EpiValues, runtime inputs) of ``node``'s epilogue (a folded scatter, a fused ACT)."""
        e, c = node.epilogue, self.plan.consts
        kappa = scatter.in_shapes[1][1] if scatter is not None else 0
        epi = Epi(bool(e.scale), bool(e.bias), e.residual, e.act, kappa, outer)
        vals = EpiValues(c[e.scale] if e.scale else None, c[e.bias] if e.bias else None)
        if node.name in self.acts:
            epi, vals.slope = self._act(self.acts[node.name], epi)
        runtime = [self.env[node.inputs[-1]]] if e.residual else []
        if scatter is not None:
            s = self.env[scatter.inputs[1]]
            offset, rows = self.row_offset.get(scatter.inputs[1], 0), _channels(s)
            vals.inv = _inverse_index(_index(scatter), scatter.out_shape[1], offset)
            epi = replace(epi, s_rows=rows if rows != kappa + 1 else 0)
            runtime.append(s)
        return epi, vals, runtime

    # -- handlers -------------------------------------------------------------------------
    def contraction(self, node: Node, scatter: Node | None = None) -> relax.Expr:
        """CONV or MATMUL ``node`` (optionally with a folded scatter and its epilogue)."""
        a = node.attrs
        assert isinstance(a, (ConvAttrs, MatmulAttrs))
        epi_node = scatter or node
        w = self.plan.consts[node.weights[0]]
        s_node = self.joined.get(node.name)
        if s_node is not None:  # the S branch's filters below this step's rows, then a zero row
            ws = self.plan.consts[s_node.weights[0]]
            w = w.reshape(w.shape[0], -1)
            w = np.concatenate([w, ws.reshape(ws.shape[0], -1), np.zeros((1, w.shape[1]), w.dtype)])
        elif node.name in self.extended:  # the S branch: one extra, all-zero output channel
            w = np.concatenate([w, np.zeros((1, *w.shape[1:]), w.dtype)])
        n, _, h, wd = node.in_shapes[0]
        outer, cin = a.outer, a.cin
        inner = a.inner if isinstance(a, MatmulAttrs) else 1
        cout = w.shape[0]
        epi, vals, extra = self.epilogue(epi_node, outer=outer, scatter=scatter)
        split_epi = inner > 1 and not epi_node.epilogue.empty
        if split_epi:
            epi, vals, extra = Epi(), EpiValues(), []
        x = self.env[node.inputs[0]]
        if node.op is Op.MATMUL or is_pointwise(node):
            batch, p = n * outer, inner * math.prod(node.out_shape[2:])
            rows = _channels(x) // (outer * inner)  # > cin: a buffer shared with the S branch
            call = gemmk.gemm(
                batch,
                cin,
                p,
                w.reshape(cout, cin),
                epi,
                vals,
                x_rows=rows,
                simd=self.simd,
                tiling=_GEMM_PLAIN if self.arch == "gpu" else None,
                label=node.name,
            )
        else:
            assert isinstance(a, ConvAttrs)
            s = convk.ConvShape(
                n * outer,
                cin,
                h,
                wd,
                cout,
                tuple(a.kernel),
                tuple(a.stride),
                tuple(a.padding),
                tuple(a.dilation),
                a.groups,
            )
            call = convk.conv(
                s,
                w,
                epi,
                vals,
                simd=self.simd,
                tiling=_CONV_PLAIN if self.arch == "gpu" else None,
                label=node.name,
            )
        y = self.emit(call, [x, *extra], (n, outer * cout * inner, *node.out_shape[2:]))
        if s_node is not None:
            self.env[s_node.output] = y
            self.row_offset[s_node.output] = w.shape[0] - s_node.out_shape[1] - 1
        if split_epi:
            return self.elementwise(epi_node, "copy", [y])
        return y

    def conv_or_matmul(self, node: Node) -> relax.Expr:
        return self.contraction(node)

    def linear(self, node: Node) -> relax.Expr:
        n, f = node.in_shapes[0]
        w = self.plan.consts[node.weights[0]]
        epi, vals, extra = self.epilogue(node)
        call = gemmk.gemm(
            n,
            f,
            1,
            w,
            epi,
            vals,
            simd=self.simd,
            tiling=_GEMM_PLAIN if self.arch == "gpu" else None,
            label=node.name,
        )
        return self.emit(call, [self.env[node.inputs[0]], *extra], node.out_shape)

    def elementwise(
        self, node: Node, kind: str, xs: list[relax.Expr] | None = None, affine=None
    ) -> relax.Expr:
        xs = xs if xs is not None else [self.env[x] for x in node.data_inputs]
        epi, vals, extra = self.epilogue(node)
        call = simple.eltwise(kind, node.out_shape, epi, vals, affine=affine)
        return self.emit(call, [*xs, *extra], node.out_shape)

    def scatter_add(self, node: Node) -> relax.Expr:
        a_node = self.producer.get(node.inputs[0])
        if a_node is not None and self.folded.get(a_node.name) is node:
            return self.contraction(a_node, scatter=node)
        kappa = node.in_shapes[1][1]
        s = self.env[node.inputs[1]]
        s_node = self.producer.get(node.inputs[1])
        if s_node is None or s_node.name not in self.extended:  # append the zero row here
            zeros = relax.const(np.zeros((node.in_shapes[1][0], 1, *node.in_shapes[1][2:]), np.float32))
            s = self.emit(
                simple.concat([node.in_shapes[1], zeros.struct_info.shape]),
                [s, zeros],
                (node.in_shapes[1][0], kappa + 1, *node.in_shapes[1][2:]),
            )
        epi, vals, extra = self.epilogue(node)
        epi = replace(epi, scatter=kappa, outer=1, s_rows=0)
        vals.inv = _inverse_index(_index(node), node.out_shape[1])
        call = simple.eltwise("copy", node.out_shape, epi, vals)
        return self.emit(call, [self.env[node.inputs[0]], *extra, s], node.out_shape)

    def affine(self, node: Node) -> relax.Expr:
        c = self.plan.consts
        return self.elementwise(node, "affine", affine=(c[node.weights[0]], c[node.weights[1]]))

    def permute(self, node: Node) -> relax.Expr:
        a = node.attrs
        if not isinstance(a, PermuteAttrs):
            raise CEPDError(f"{node.name}: a permute without PermuteAttrs")
        epi, vals, extra = self.epilogue(node)
        call = simple.permute(node.in_shapes[0], a.axes, a.perm, epi, vals)
        return self.emit(call, [self.env[node.inputs[0]], *extra], node.out_shape)

    def pool(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        a = node.attrs
        if not isinstance(a, PoolAttrs):
            raise CEPDError(f"{node.name}: a pool without PoolAttrs")
        kind = "max" if node.op is Op.MAXPOOL else "avg"
        call = simple.pool(
            kind,
            node.in_shapes[0],
            node.out_shape,
            a.kernel,
            a.stride,
            a.padding,
            contiguous=self.arch == "x86",
        )
        return self.emit(call, [self.env[node.inputs[0]]], node.out_shape)

    def global_avgpool(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        return self.emit(simple.global_avgpool(node.in_shapes[0]), [self.env[node.inputs[0]]], node.out_shape)

    def concat(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        return self.emit(simple.concat(node.in_shapes), [self.env[x] for x in node.inputs], node.out_shape)

    def flatten(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        return self._view(self.env[node.inputs[0]], node.out_shape)

    def relu(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        act = "relu6" if isinstance(node.attrs, ReluAttrs) and node.attrs.max == 6.0 else "relu"
        call = simple.eltwise("copy", node.out_shape, Epi(act=act), EpiValues())
        return self.emit(call, [self.env[node.inputs[0]]], node.out_shape)

    def _act(self, node: Node, epi: Epi) -> tuple[Epi, np.ndarray | None]:
        """``epi`` that applies the ACT ``node`` last, and prelu's slopes."""
        a = node.attrs
        if not isinstance(a, ActAttrs):
            raise CEPDError(f"{node.name}: an activation without ActAttrs")
        slope = self.plan.consts[node.weights[0]] if a.kind == "prelu" else None
        slopes = slope.size if slope is not None else 0
        return replace(epi, act=a.kind, alpha=float(a.alpha), slopes=slopes), slope

    def act(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        epi, slope = self._act(node, Epi())
        call = simple.eltwise("copy", node.out_shape, epi, EpiValues(slope=slope))
        return self.emit(call, [self.env[node.inputs[0]]], node.out_shape)

    def mul(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        call = simple.mul(node.in_shapes[0], node.in_shapes[1])
        return self.emit(call, [self.env[x] for x in node.inputs], node.out_shape)

    def slice(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        a = _attrs(node, SliceAttrs)
        x = self.env[node.inputs[0]]
        if (a.start, a.stop) == (0, node.in_shapes[0][1]):
            return x
        return self.emit(simple.channel_slice(node.in_shapes[0], a.start, a.stop), [x], node.out_shape)

    def pad(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        a = _attrs(node, PadAttrs)
        x = self.env[node.inputs[0]]
        if not any(a.pads):
            return x
        return self.emit(simple.pad(node.in_shapes[0], a.pads), [x], node.out_shape)

    def resize(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        a = _attrs(node, ResizeAttrs)
        call = simple.resize(node.in_shapes[0], a.size, a.mode, a.align_corners)
        return self.emit(call, [self.env[node.inputs[0]]], node.out_shape)

    def layernorm(self, node: Node) -> relax.Expr:
        _no_epilogue(node)
        a = _attrs(node, NormAttrs)
        scale, shift = (self.plan.consts[w] for w in node.weights)
        call = simple.layernorm(node.in_shapes[0], a.eps, scale, shift)
        return self.emit(call, [self.env[node.inputs[0]]], node.out_shape)


HANDLERS: dict[Op, Callable[[Lowering, Node], relax.Expr]] = {
    Op.CONV: Lowering.conv_or_matmul,
    Op.MATMUL: Lowering.conv_or_matmul,
    Op.LINEAR: Lowering.linear,
    Op.AFFINE: Lowering.affine,
    Op.PERMUTE: Lowering.permute,
    Op.SCATTER_ADD: Lowering.scatter_add,
    Op.CONCAT: Lowering.concat,
    Op.FLATTEN: Lowering.flatten,
    Op.ADD: lambda lw, node: lw.elementwise(node, "add"),
    Op.RELU: Lowering.relu,
    Op.MAXPOOL: Lowering.pool,
    Op.AVGPOOL: Lowering.pool,
    Op.GLOBAL_AVGPOOL: Lowering.global_avgpool,
    Op.ACT: Lowering.act,
    Op.MUL: Lowering.mul,
    Op.SLICE: Lowering.slice,
    Op.PAD: Lowering.pad,
    Op.RESIZE: Lowering.resize,
    Op.LAYERNORM: Lowering.layernorm,
}


def _attrs(node: Node, cls: type):
    """``node.attrs``, checked to be a ``cls``."""
    if not isinstance(node.attrs, cls):
        raise CEPDError(f"{node.name}: a {node.op.value} node without {cls.__name__}")
    return node.attrs


def _unfolded(node: Node) -> bool:
    """Whether a contraction works on its input as it is (no folded channel modes)."""
    a = node.attrs
    if isinstance(a, MatmulAttrs):
        return a.outer == 1 and a.inner == 1
    return isinstance(a, ConvAttrs) and a.outer == 1


def _index(node: Node) -> tuple[int, ...]:
    """The output channels a SCATTER_ADD adds into."""
    if not isinstance(node.attrs, ScatterAttrs):
        raise CEPDError(f"{node.name}: a scatter-add without ScatterAttrs")
    return node.attrs.index


def _inverse_index(index, channels: int, offset: int = 0) -> np.ndarray:
    """inv[o] = offset + position of o in ``index``, or offset + len(index) (the zero row)."""
    index = [int(i) for i in index]
    if len(set(index)) != len(index):
        raise CEPDError("scatter-add with repeated channel indices is not supported by the TVM target")
    inv = np.full(channels, offset + len(index), np.int32)
    inv[index] = offset + np.arange(len(index), dtype=np.int32)
    return inv


def _channels(e: relax.Expr) -> int:
    return int(e.ty.shape[1])


def _no_epilogue(node: Node) -> None:
    if not node.epilogue.empty:
        raise CEPDError(f"{node.name}: the TVM target cannot apply an epilogue to a {node.op.value} node")


def lower_plan(plan: Plan, **kw) -> tuple[tvm.IRModule, Lowering]:
    """The Relax module of a Plan (``main(x) -> y``) and the lowering (kernels, use counts)."""
    lw = Lowering(plan, **kw)
    return lw.run(), lw
