"""Which Plan nodes run together on the engine, and the geometry of their tiles.

A *group* is a chain of PE-array steps (conv, matmul, linear, pools) that run tile by tile:
the group's input tile is loaded from DDR into an input buffer half, intermediates stay in the
on-chip scratch, and only the last step writes DDR. A CEPD layer (TT chain + sparse branch +
scatter-add) becomes one group, the scatter-add fused into the last TT step's epilogue, so the
layer reads its input once and writes its output once. Other weighted ops and pools are
one-step groups; element-wise and data-movement ops run on the vector unit (DDR to DDR).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache

from cepd_deploy.plan.ir import CEPDBlock, ConvAttrs, MatmulAttrs, Node, Op, Plan, PoolAttrs
from cepd_deploy.targets.pynq_z1.isa import MAX_COMPS, StepOp

ARRAY_OPS = {
    Op.CONV: StepOp.MAC,
    Op.MATMUL: StepOp.MAC,
    Op.LINEAR: StepOp.MAC,
    Op.MAXPOOL: StepOp.MAXP,
    Op.AVGPOOL: StepOp.AVGP,
}


@dataclass(frozen=True)
class Region:
    """Rows [y0, y0+h) x cols [x0, x0+w) of a value's image."""

    y0: int
    x0: int
    h: int
    w: int

    def union(self, o: Region | None) -> Region:
        if o is None:
            return self
        y0, x0 = min(self.y0, o.y0), min(self.x0, o.x0)
        y1, x1 = max(self.y0 + self.h, o.y0 + o.h), max(self.x0 + self.w, o.x0 + o.w)
        return Region(y0, x0, y1 - y0, x1 - x0)


@dataclass(frozen=True)
class Step:
    """One Plan node as an engine step on one folded image (channels, height, width)."""

    node: Node
    op: StepOp
    src: str
    dst: str
    src_img: tuple[int, int, int]
    dst_img: tuple[int, int, int]
    groups: int
    cin_g: int
    cout_g: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    scatter: Node | None = None  # a SCATTER_ADD fused into this step's epilogue
    scatter_b: str | None = None  # its sparse-branch operand (an earlier step's output)
    transposed: bool = False  # a LINEAR with the output features on the lanes (see transposed_linear)

    @property
    def red(self) -> int:
        """Products per output (pools: window taps)."""
        taps = self.kernel[0] * self.kernel[1]
        return taps * (self.cin_g if self.op is StepOp.MAC else 1)

    @property
    def pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def src_region(self, out: Region) -> Region:
        """The part of the source image an output region reads (clipped to the image)."""
        lo, hi = [], []
        for d, (o0, n) in enumerate(((out.y0, out.h), (out.x0, out.w))):
            a = o0 * self.stride[d] - self.padding[d]
            b = (o0 + n - 1) * self.stride[d] - self.padding[d] + (self.kernel[d] - 1) * self.dilation[d] + 1
            size = self.src_img[1 + d]
            lo.append(max(0, a))
            hi.append(min(size, b))
        return Region(lo[0], lo[1], max(0, hi[0] - lo[0]), max(0, hi[1] - lo[1]))


@dataclass
class Group:
    """Steps that run tile by tile from one DDR input to one DDR output."""

    name: str
    steps: list[Step]
    x: str  # the DDR input
    out: str  # the DDR output
    images: int = 1  # folded images (N*outer) of a one-step group
    residual: str | None = None  # DDR value the last step's epilogue adds
    buffered: list[str] = field(default_factory=list)  # values on chip (x first)
    src: str = ""  # the DDR value loaded into x (x itself, or a subsampled view of src)
    load_step: tuple[int, int] = (1, 1)  # the loader keeps every load_step-th row and column
    src_img: tuple[int, ...] = ()  # (channels, height, width) of src in DDR
    from_blob: bool = False  # src is a weight section of the blob, not an arena value
    reads: tuple[str, ...] = ()  # other arena values the steps read (a transposed LINEAR's input)
    subsample: Node | None = None  # a CEPD layer's 1x1 max-pool that the loader does (load_step)

    def __post_init__(self) -> None:
        self.src = self.src or self.x
        self.src_img = self.src_img or self.x_img

    @property
    def x_img(self) -> tuple[int, int, int]:
        return next(s.src_img for s in self.steps if s.src == self.x)

    @property
    def out_img(self) -> tuple[int, int, int]:
        return self.steps[-1].dst_img

    def regions(self, tile: Region) -> dict[str, Region]:
        """The region of every value a tile of the output needs."""
        need: dict[str, Region] = {self.out: tile}
        for step in reversed(self.steps):
            r = need[step.dst]
            if step.scatter_b:
                need[step.scatter_b] = r.union(need.get(step.scatter_b))
            need[step.src] = step.src_region(r).union(need.get(step.src))
        return need


def _image(node: Node, shape: tuple[int, ...], which: str) -> tuple[int, int, int]:
    """(channels, height, width) of one folded image of a node's input or output."""
    a = node.attrs
    if node.op is Op.LINEAR:
        return (shape[1], 1, 1)
    if isinstance(a, MatmulAttrs):
        c = a.cin if which == "in" else a.cout
        return (c, a.inner * shape[2], shape[3])
    if isinstance(a, ConvAttrs):
        c = a.cin if which == "in" else a.cout
        return (c, shape[2], shape[3])
    return (shape[1], shape[2], shape[3])  # pools


def make_step(node: Node) -> Step:
    """The engine step of a conv, matmul, linear or pool node (matmul and linear: a 1x1 window)."""
    a = node.attrs
    src_img, dst_img = _image(node, node.in_shapes[0], "in"), _image(node, node.out_shape, "out")
    op = ARRAY_OPS[node.op]
    if op is StepOp.MAC:
        groups, kw = 1, {}  # MATMUL and LINEAR: a 1x1 window
        if isinstance(a, ConvAttrs):
            groups = a.groups
            kw = dict(kernel=a.kernel, stride=a.stride, padding=a.padding, dilation=a.dilation)
            kw = {k: tuple(v) for k, v in kw.items()}
        return Step(
            node,
            op,
            node.data_inputs[0],
            node.output,
            src_img,
            dst_img,
            groups,
            src_img[0] // groups,
            dst_img[0] // groups,
            **kw,
        )
    assert isinstance(a, PoolAttrs)
    c = src_img[0]
    return Step(
        node,
        op,
        node.data_inputs[0],
        node.output,
        src_img,
        dst_img,
        c,
        1,
        1,
        tuple(a.kernel),
        tuple(a.stride),
        tuple(a.padding),
    )


def images(node: Node) -> int:
    """Folded images (N*outer) a node runs on."""
    a = node.attrs
    return node.in_shapes[0][0] * (a.outer if isinstance(a, (ConvAttrs, MatmulAttrs)) else 1)


def _unfolded(node: Node) -> bool:
    """A contraction on the plain (N, C, H, W) view (no outer or inner channel modes)."""
    a = node.attrs
    if isinstance(a, MatmulAttrs):
        return a.outer == 1 and a.inner == 1
    return isinstance(a, ConvAttrs) and a.outer == 1


def fused(block: CEPDBlock, readers: Counter[str]) -> Group | None:
    """A CEPD layer as one group, or None when the engine cannot run it as one.

    The group's steps are the TT chain, the S conv before the chain's last step, and the
    scatter-add fused into that last step's epilogue; a strided 1x1 layer's subsample is done
    by the loader (``load_step``), so the tile buffer holds only the pixels used. The engine
    needs every step on the PE array on unfolded views (no PERMUTE, ``outer = inner = 1``), the
    residual only on the last node, and no value inside the layer read from outside it.
    """
    chain = block.steps
    sparse, scatter, sub = block.sparse, block.scatter, block.subsample
    on_array = all(n.op in (Op.CONV, Op.MATMUL) and _unfolded(n) for n in chain)
    if len(block.nodes) < 2 or not chain or not on_array:
        return None
    if sparse is not None and not _unfolded(sparse):
        return None
    if any(n.epilogue.residual for n in block.nodes if n is not block.last):
        return None
    inside = Counter(x for n in block.nodes for x in n.inputs)
    if any(readers[n.output] != inside[n.output] for n in block.nodes if n is not block.last):
        return None
    produced = {n.output for n in block.nodes}
    if {x for n in block.nodes for x in n.data_inputs if x not in produced} != {block.input}:
        return None
    steps = [make_step(n) for n in chain]
    if scatter is not None:
        last = chain[-1]
        if sparse is None or scatter.data_inputs != (last.output, sparse.output) or not last.epilogue.empty:
            return None
        tail = replace(steps[-1], dst=scatter.output, scatter=scatter, scatter_b=sparse.output)
        steps = steps[:-1] + [make_step(sparse), tail]
    elif sparse is not None:
        return None
    x = block.branch_input
    g = Group(block.layer, steps, x, block.output, residual=block.residual)
    g.buffered = [x] + [s.dst for s in steps[:-1]]
    if sub is None:
        return flat_rows(g)
    assert isinstance(sub.attrs, PoolAttrs)  # a 1x1 max-pool with the layer's stride
    src_img = _image(sub, sub.in_shapes[0], "in")
    return replace(g, src=block.input, src_img=src_img, load_step=tuple(sub.attrs.stride), subsample=sub)


def single(node: Node) -> Group:
    """A group of one node alone (subsampling on load where it is a strided 1x1 op)."""
    step = make_step(node)
    g = Group(
        node.name,
        [step],
        step.src,
        node.output,
        images=images(node),
        residual=node.inputs[-1] if node.epilogue.residual else None,
    )
    g.buffered = [step.src]
    return flat_rows(strided_load(g))


def transposed_linear(node: Node) -> Group | None:
    """A LINEAR of one image with its output features on the lanes: the weight matrix, stored
    transposed in the blob, is streamed as the "image" (fin channels x fout pixels) and the input
    vector serves as the weights of a single output channel (the bias is then per pixel). The
    products and their sum are the same integers as the plain mapping."""
    e = node.epilogue
    if node.op is not Op.LINEAR or node.in_shapes[0][0] != 1 or e.scale or e.residual:
        return None
    fin, fout = node.in_shapes[0][1], node.out_shape[1]
    wt = node.weights[0] + "#T"
    step = Step(node, StepOp.MAC, wt, node.output, (fin, 1, fout), (1, 1, fout), 1, fin, 1, transposed=True)
    return Group(node.name, [step], wt, node.output, buffered=[wt], from_blob=True, reads=(node.inputs[0],))


def flat_rows(g: Group) -> Group:
    """An all-1x1 group sees its images as one row of H*W pixels: tiles can then be any run of
    pixels (whole lane blocks), not whole rows."""
    if g.load_step != (1, 1) or not all(s.pointwise for s in g.steps):
        return g
    row = lambda img: (img[0], 1, img[1] * img[2])  # noqa: E731
    steps = [replace(s, src_img=row(s.src_img), dst_img=row(s.dst_img)) for s in g.steps]
    return replace(g, steps=steps, src_img=row(g.src_img))


def strided_load(g: Group) -> Group:
    """Let the loader subsample when a one-step group is a strided 1x1 op (a 1x1 conv or
    max-pool with stride): the tile buffer then holds only the pixels used. (A CEPD layer's
    subsample is its block's, see :func:`fused`.)"""
    (s,) = g.steps
    if s.kernel != (1, 1) or s.padding != (0, 0) or s.stride == (1, 1):
        return g
    sy, sx = s.stride
    c, h, w = s.src_img
    sub = replace(s, src_img=(c, (h - 1) // sy + 1, (w - 1) // sx + 1), stride=(1, 1))
    return replace(g, steps=[sub], load_step=(sy, sx))


def partition(plan: Plan) -> list[Group | Node]:
    """The Plan as an ordered list of groups (PE array) and nodes (vector unit): a CEPD layer
    (:meth:`Plan.blocks`) that :func:`fused` accepts is one group where its first node was."""
    readers = plan.readers()
    first: dict[str, Group] = {}  # the first node of a fused layer -> its group
    covered: set[str] = set()
    for block in plan.blocks():
        g = fused(block, readers)
        if g is not None:
            first[block.nodes[0].name] = g
            covered.update(n.name for n in block.nodes)
    items: list[Group | Node] = []
    for node in plan.nodes:
        if node.name in first:
            items.append(first[node.name])
        elif node.name not in covered:
            items.append(single(node) if node.op in ARRAY_OPS else node)
    return items


def _nodes(g: Group) -> list[Node]:
    """The Plan nodes a group computes (its steps, fused scatter-adds and loader subsample)."""
    out = [s.node for s in g.steps] + [s.scatter for s in g.steps if s.scatter is not None]
    return out + ([g.subsample] if g.subsample is not None else [])


def _plain(g: Group) -> list[Step]:
    """A group's steps on their 2-D images (undoing :func:`flat_rows`)."""
    if g.load_step != (1, 1) or any(s.transposed for s in g.steps):
        return list(g.steps)
    return [
        replace(
            s,
            src_img=_image(s.node, s.node.in_shapes[0], "in"),
            dst_img=_image(s.node, s.node.out_shape, "out"),
        )
        for s in g.steps
    ]


def chainable(a: Group, b: Group, readers: Counter[str], output: str) -> bool:
    """Whether group ``b`` can take group ``a``'s output from the scratch instead of DDR: ``b``
    reads ``a``'s output as its input and nothing else reads it, neither runs on folded images or
    views (``outer``, ``inner``) nor from the blob, ``b`` loads plainly (no subsample), and only
    ``b`` adds a residual (an epilogue's residual is addressed in the group's output tile)."""
    if a.images != 1 or b.images != 1 or a.from_blob or b.from_blob or a.reads or b.reads:
        return False
    contractions = [s.node for s in a.steps + b.steps if isinstance(s.node.attrs, (ConvAttrs, MatmulAttrs))]
    if not all(_unfolded(n) for n in contractions):
        return False
    if a.residual is not None or b.x != a.out or b.src != b.x or b.load_step != (1, 1) or a.out == output:
        return False
    if b.residual == a.out or len(a.steps) + len(b.steps) > MAX_COMPS:
        return False
    if sum(n.inputs.count(a.out) for n in _nodes(b)) != readers[a.out]:
        return False
    return _plain(a)[-1].dst_img == next(s.src_img for s in _plain(b) if s.src == b.x)


def merge(parts: list[Group]) -> Group:
    """Consecutive groups (each :func:`chainable` into the next) as one group: the first's input
    tile is loaded, every intermediate value stays in the scratch, the last writes DDR."""
    if len(parts) == 1:
        return parts[0]
    first, last = parts[0], parts[-1]
    steps = [s for g in parts for s in _plain(g)]
    g = Group(
        "+".join(p.name for p in parts),
        steps,
        first.x,
        last.out,
        residual=last.residual,
        src=first.src,
        load_step=first.load_step,
        src_img=first.src_img if first.load_step != (1, 1) else (),
        subsample=first.subsample,
    )
    g.buffered = [first.x] + [s.dst for s in steps[:-1]]
    return flat_rows(g)


def lane_shapes(lanes: int) -> list[tuple[int, int]]:
    """Block shapes (rows, cols) the lanes can take: the widest for each row count."""
    return [(h, lanes // h) for h in range(1, math.isqrt(lanes) + 1)]


@cache
def bank_ii(pitch: int, stride: tuple[int, int], shape: tuple[int, int], banks: int) -> int:
    """Cycles per tap of a block-mode step: the worst bank conflict of its lane addresses
    (the tile buffers are split cyclically over ``banks`` = lanes banks)."""
    count: dict[int, int] = {}
    for i in range(shape[0]):
        for j in range(shape[1]):
            b = (i * stride[0] * pitch + j * stride[1]) % banks
            count[b] = count.get(b, 0) + 1
    return max(count.values())


def choose_pitch(width: int, uses: list[tuple[tuple[int, int], tuple[int, int]]], banks: int) -> int:
    """The smallest row pitch >= width with the fewest bank conflicts for the block-mode
    reads ``uses`` (lane shape, stride) of a buffered value."""
    if not uses:
        return max(1, width)
    best = None
    for p in range(max(1, width), max(1, width) + banks):
        ii = max(bank_ii(p, stride, shape, banks) for shape, stride in uses)
        if best is None or ii < best[0]:
            best = (ii, p)
        if ii == 1:
            break
    return best[1]
