"""``CEPDConv2d``: a conv whose weight is L + S, a TT chain plus kappa kept output filters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.plan.cost import nodes_macs
from cepd_deploy.plan.reference import run_nodes
from cepd_deploy.plan.ttconv import TTConvSpec, choose_path, lower_ttconv, ttconv_weights
from cepd_deploy.tt import TTLayout, tt_full, tt_svd


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(x) for x in v)


class CEPDConv2d(nn.Module):
    """y = conv(x, L) + conv(x, S) + bias, with L a TT and S kappa whole output filters.

    ``cores[j]`` has shape (r_{j-1}, n_j, r_j) for the layout's cores; ``s_weight`` (kappa, I,
    kh, kw) holds the kept filters and ``s_index`` their output channels. ``forward`` runs the
    TT chain in the contraction order the Plan picks (fewest MACs) without building W.

    >>> layer = CEPDConv2d.from_conv(nn.Conv2d(16, 32, 3, padding=1), ranks=(8, 8), kappa=3)
    >>> layer(torch.randn(1, 16, 8, 8)).shape
    torch.Size([1, 32, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        ranks: Sequence[int],
        kappa: int = 0,
        layout: str = "o-k-i",
        o_factors: Sequence[int] | None = None,
        i_factors: Sequence[int] | None = None,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)  # a 1x1 layer replacing nn.Linear on (N, H, W, C)
        kernel = _pair(kernel_size)
        lay = TTLayout.parse(layout, out_channels, in_channels, kernel,
                             tuple(o_factors) if o_factors else None,
                             tuple(i_factors) if i_factors else None)  # fmt: skip
        if not 0 <= kappa <= out_channels:
            raise CEPDError(f"kappa must be in [0, {out_channels}], got {kappa}")
        for name, v, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= low for x in _pair(v)):
                raise CEPDError(f"{name} must be whole numbers >= {low}, got {v!r}")
        self.spec = TTConvSpec(lay, lay.clip_ranks(tuple(ranks)), int(kappa), _pair(stride),
                               _pair(padding), _pair(dilation))  # fmt: skip
        r = (1, *self.spec.ranks, 1)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(r[j], n, r[j + 1])) for j, n in enumerate(lay.core_sizes)
        )
        self.s_weight = nn.Parameter(torch.zeros(kappa, in_channels, *kernel))
        self.register_buffer("s_index", torch.arange(kappa, dtype=torch.long))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._paths: dict[tuple, object] = {}
        self._nodes: dict[tuple, list] = {}
        self._weights: tuple | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        ranks: Sequence[int],
        kappa: int = 0,
        layout: str = "o-k-i",
        o_factors: Sequence[int] | None = None,
        i_factors: Sequence[int] | None = None,
    ) -> CEPDConv2d:
        """The direct method: TT-SVD of W, then the kappa filters of W - L with largest l1 norm."""
        if conv.groups != 1:
            raise CEPDError("CEPDConv2d replaces ungrouped convs only (groups=1)")
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise CEPDError("CEPDConv2d needs numeric zero padding")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, ranks=ranks,
                    kappa=kappa, layout=layout, o_factors=o_factors, i_factors=i_factors,
                    stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    bias=conv.bias is not None)  # fmt: skip
        w = conv.weight.detach()
        layer.set_weights(w, conv.bias.detach() if conv.bias is not None else None)
        return layer

    @torch.no_grad()
    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Fill L by TT-SVD of ``weight`` and S by l1 filter selection on the residual."""
        lay = self.spec.layout
        cores = tt_svd(weight, lay, self.spec.ranks)
        for p, c in zip(self.cores, cores):  # a rank the data cannot fill is zero-padded
            p.zero_()
            p[: c.shape[0], :, : c.shape[2]].copy_(c)
        residual = weight - lay.from_cores_tensor(tt_full(cores))
        index = select_filters(residual, self.spec.kappa)
        self.s_index.copy_(index)
        self.s_weight.copy_(residual[index])
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, ranks: Sequence[int], kappa: int = 0,
                    layout: str = "o-k-i") -> CEPDConv2d:  # fmt: skip
        """A channels-last 1x1 CEPD layer computing ``linear`` over the last dim of (N, H, W, C)
        (the pointwise layers of ConvNeXt-style blocks)."""
        layer = cls(linear.in_features, linear.out_features, 1, ranks=ranks, kappa=kappa, layout=layout,
                    bias=linear.bias is not None, channels_last=True)  # fmt: skip
        w = linear.weight.detach()[:, :, None, None]
        layer.set_weights(w, linear.bias.detach() if linear.bias is not None else None)
        return layer

    # -- shapes and meta ----------------------------------------------------------------
    @property
    def layout(self) -> TTLayout:
        return self.spec.layout

    @property
    def in_channels(self) -> int:
        return self.spec.layout.in_channels

    @property
    def out_channels(self) -> int:
        return self.spec.layout.out_channels

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.spec.layout.kernel

    def meta(self) -> dict:
        """Everything needed to rebuild the layer's structure (saved in model files)."""
        s = self.spec
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(s.layout.kernel),
            "layout": s.layout.spec,
            "o_factors": list(s.layout.o_factors),
            "i_factors": list(s.layout.i_factors),
            "ranks": list(s.ranks),
            "kappa": s.kappa,
            "stride": list(s.stride),
            "padding": list(s.padding),
            "dilation": list(s.dilation),
            "bias": self.bias is not None,
        } | ({"channels_last": True} if self.channels_last else {})

    @classmethod
    def from_meta(cls, meta: dict) -> CEPDConv2d:
        return cls(meta["in_channels"], meta["out_channels"], meta["kernel_size"],
                   ranks=meta["ranks"], kappa=meta["kappa"], layout=meta["layout"],
                   o_factors=meta["o_factors"], i_factors=meta["i_factors"],
                   stride=meta["stride"], padding=meta["padding"], dilation=meta["dilation"],
                   bias=meta["bias"], channels_last=meta.get("channels_last", False))  # fmt: skip

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={s.layout.kernel}, "
            f"layout={s.layout.spec!r}, ranks={s.ranks}, kappa={s.kappa}, stride={s.stride}, "
            f"padding={s.padding}"
        )

    # -- compute ------------------------------------------------------------------------
    def reconstruct(self) -> torch.Tensor:
        """The dense weight W = L + S (O, I, kh, kw)."""
        w = self.spec.layout.from_cores_tensor(tt_full(list(self.cores)))
        return w.index_add(0, self.s_index, self.s_weight)

    def path_for(self, in_shape: tuple[int, ...]):
        """The contraction path (fewest MACs) for an input shape; cached."""
        key = tuple(in_shape)
        if key not in self._paths:
            self._paths[key] = choose_path(self.spec, key, nodes_macs)
        return self._paths[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self._forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        path = self.path_for(shape)
        key = (shape, tuple(self.s_index.tolist()))
        if key not in self._nodes:
            self._nodes[key] = lower_ttconv(self.spec, "l", "x", shape, path,
                                            bias=self.bias is not None, index=key[1])  # fmt: skip
        nodes = self._nodes[key]
        return run_nodes(nodes, {"x": x}, self._step_weights(path))["l.out"]

    def _step_weights(self, path) -> dict[str, torch.Tensor]:
        """The step weights of ``path``; cached for inference while the parameters are unchanged."""
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        version = (id(path), *(p._version for p in self.parameters()), self.s_index._version)
        if not grad and self._weights is not None and self._weights[0] == version:
            return self._weights[1]
        weights = ttconv_weights(self.spec, "l", path, self.cores, self.s_weight, self.s_index)
        if self.bias is not None:
            weights["l.bias"] = self.bias
        self._weights = None if grad else (version, {k: v.detach() for k, v in weights.items()})
        return weights

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer through one dense conv of :meth:`reconstruct` (for checks)."""
        s = self.spec
        nchw = x.permute(0, 3, 1, 2) if self.channels_last else x
        y = F.conv2d(nchw, self.reconstruct(), self.bias, s.stride, s.padding, s.dilation)
        return y.permute(0, 2, 3, 1) if self.channels_last else y


def select_filters(weight: torch.Tensor, kappa: int) -> torch.Tensor:
    """Output channels of the kappa filters with the largest l1 norm, ascending."""
    norms = weight.abs().flatten(1).sum(1)
    return torch.sort(torch.topk(norms, kappa).indices).values
