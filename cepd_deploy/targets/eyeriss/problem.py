"""Every weighted Plan op as one convolution problem (the shape the row-stationary mapper takes).

A CONV on its folded view (N*outer, cin, H, W) is a grouped conv whose batch absorbs ``outer``;
a MATMUL on (N*outer, cin, inner*H*W) is a 1x1 conv on an (inner*H) x W image; a LINEAR is a 1x1
conv on a 1x1 image (Eyeriss runs FC layers as convolutions).
"""

from __future__ import annotations

from dataclasses import dataclass

from cepd_deploy.plan.ir import ConvAttrs, MatmulAttrs, Node, Op


@dataclass(frozen=True)
class ConvProblem:
    """One (grouped) convolution: sizes per group; ``h, w`` include the zero padding."""

    n: int  # images (the batch times any folded outer modes)
    g: int  # groups
    c: int  # input channels per group
    m: int  # filters (output channels) per group
    h: int  # padded input rows
    w: int  # padded input columns
    r: int  # filter rows
    s: int  # filter columns
    e: int  # output rows
    f: int  # output columns
    uh: int = 1  # strides
    uw: int = 1
    dh: int = 1  # dilations
    dw: int = 1
    pad_words: int = 0  # padding words per input plane (generated on chip, never read from DRAM)

    @property
    def macs(self) -> int:
        return self.n * self.g * self.m * self.c * self.e * self.f * self.r * self.s

    @property
    def outputs(self) -> int:
        return self.n * self.g * self.m * self.e * self.f

    @property
    def weights(self) -> int:
        return self.g * self.m * self.c * self.r * self.s

    @property
    def inputs(self) -> int:
        """Input words held in DRAM (no padding)."""
        return self.n * self.g * self.c * (self.h * self.w - self.pad_words)

    def rows_for(self, out_rows: int) -> int:
        """Input rows needed to produce ``out_rows`` consecutive output rows."""
        return min(self.h, (out_rows - 1) * self.uh + (self.r - 1) * self.dh + 1)


def conv_problem(node: Node) -> ConvProblem:
    """The convolution a CONV, MATMUL or LINEAR node computes."""
    if node.op is Op.LINEAR:
        n, fin = node.in_shapes[0]
        return ConvProblem(n, 1, fin, node.out_shape[1], 1, 1, 1, 1, 1, 1)
    a = node.attrs
    n, _, h, w = node.in_shapes[0]
    if isinstance(a, MatmulAttrs):
        inner = a.inner
        return ConvProblem(n * a.outer, 1, a.cin, a.cout, inner * h, w, 1, 1, inner * h, w)
    if not isinstance(a, ConvAttrs):
        raise ValueError(f"{node.op.value} is not a convolution")
    (ph, pw), (kh, kw) = a.padding, a.kernel
    _, _, e, f = node.out_shape
    groups = a.groups
    hp, wp = h + 2 * ph, w + 2 * pw
    return ConvProblem(
        n * a.outer, groups, a.cin // groups, a.cout // groups, hp, wp, kh, kw, e, f,
        *a.stride, *a.dilation, pad_words=hp * wp - h * w,
    )  # fmt: skip


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up (positive ``b``)."""
    return -(-a // b)
