"""The onnxruntime target: Plan -> ONNX (portable or fused), sessions, verification.

>>> plan = load_plan("resnet20").plan                              # doctest: +SKIP
>>> export(plan, "model.onnx", fused=True)                         # doctest: +SKIP
>>> sess = build_session("model.onnx", threads=2)                  # doctest: +SKIP

``portable``: standard ops only (opset 18). ``fused``: one ``ai.cepd::TTSparseConv`` node per
CEPD layer with a function body of standard ops (stock onnxruntime runs it as is). The Targets
(``onnxruntime``, ``onnxruntime-fused``, ``onnxruntime-native``) are in :mod:`.target`. Names are
imported on first use (onnx and onnxruntime load then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cepd_deploy import lazy

#: public name -> the module (of this package) that defines it
_LAZY = {
    "check": "exporter",
    "export": "target",
    "prepare": "target",
    "save": "exporter",
    "to_model": "exporter",
    "build_session": "session",
    "run_session": "session",
    "session_options": "session",
}

if TYPE_CHECKING:
    from cepd_deploy.targets.onnx.exporter import check, save, to_model
    from cepd_deploy.targets.onnx.session import build_session, run_session, session_options
    from cepd_deploy.targets.onnx.target import export, prepare


__getattr__, __dir__ = lazy.attach(__name__, _LAZY)


__all__ = [
    "build_session",
    "check",
    "export",
    "prepare",
    "run_session",
    "save",
    "session_options",
    "to_model",
]
