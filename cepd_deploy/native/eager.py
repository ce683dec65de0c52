"""Eager torch on the native kernel: :func:`accelerate` makes a model's CEPD convs run it."""

from __future__ import annotations

from cepd_deploy.errors import CEPDError
from cepd_deploy.native.kernel import NativeLayer
from cepd_deploy.native.layer import KernelLayer
from cepd_deploy.native.library import _lib


class _NativeConv:
    """Forward of one CEPDConv2d on the kernel (inference only; layers built per input shape)."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.cache: dict[tuple, NativeLayer] = {}

    def build(self, shape: tuple[int, ...]) -> NativeLayer:
        import torch

        from cepd_deploy.plan.ir import WEIGHTED, CEPDBlock, Plan
        from cepd_deploy.plan.passes import merge_pointwise
        from cepd_deploy.plan.ttconv import lower_ttconv, ttconv_weights

        lay = self.layer
        index = tuple(int(i) for i in lay.s_index.tolist())
        path = lay.path_for(shape)
        nodes = lower_ttconv(lay.spec, "l", "x", shape, path, bias=lay.bias is not None, index=index)
        with torch.no_grad():
            w = ttconv_weights(lay.spec, "l", path, lay.cores, lay.s_weight, lay.s_index)
            if lay.bias is not None:
                w["l.bias"] = lay.bias
            arrays = {k: v.detach().float().cpu().numpy() for k, v in w.items()}
        # the exports' exact rewrite of consecutive 1x1 steps (a 1x1 conv's r x r window core)
        merged = merge_pointwise(Plan("x", shape, nodes[-1].output, list(nodes), arrays))
        nodes, arrays = merged.nodes, merged.consts
        names = [x for n in nodes if n.op in WEIGHTED for x in n.weights]
        names += [x for x in (nodes[-1].epilogue.scale, nodes[-1].epilogue.bias) if x]
        block = CEPDBlock("l", tuple(nodes))
        # the contraction order may be the dense rebuild: one conv, not a block
        spec = KernelLayer.from_block(block) if block.steps else KernelLayer.from_conv(nodes[0])
        return NativeLayer(spec, [arrays[x] for x in names], index)

    def __call__(self, module, args):
        import torch

        (x,) = args
        if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
            return None  # training or another device: the layer's own forward
        x = x.contiguous()
        key = tuple(x.shape[1:])
        if key not in self.cache:
            self.cache[key] = self.build((1, *key))
        native = self.cache[key]
        y = torch.empty((x.shape[0], *native.out_chw), dtype=torch.float32)
        native._lib.cepd_tts_run(native._handle, x.data_ptr(), None, y.data_ptr(), x.shape[0])
        return y


def accelerate(model):
    """Make every CEPDConv2d of ``model`` run the native kernel under ``torch.no_grad()``
    (in place; unsupported layouts keep their torch forward). Returns ``model``.

    >>> with torch.no_grad():                                # doctest: +SKIP
    ...     y = accelerate(model.eval())(x)
    """
    from cepd_deploy.model.layers import CEPDConv2d

    _lib()
    for m in model.modules():
        if isinstance(m, CEPDConv2d) and not getattr(m, "_cepd_native", None):
            hook = _NativeConv(m)
            try:
                hook.build((1, m.in_channels, 8 * m.kernel_size[0], 8 * m.kernel_size[1]))
            except CEPDError:
                continue  # not supported natively: keep the torch forward
            m._cepd_native = hook
            m.forward = _forward_with(m, hook, m.forward)
    return model


def _forward_with(module, hook, original):
    def forward(x):
        y = hook(module, (x,))
        return original(x) if y is None else y

    return forward
