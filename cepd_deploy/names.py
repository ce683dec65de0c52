"""Names the command line offers as choices, here so that building its parser imports nothing heavy
(the modules that act on them import torch, onnx or onnxruntime and re-export them)."""

from __future__ import annotations

#: Rank allocations of ``convert``: uniform, or the least measured latency on stock onnxruntime
#: (the portable export) or on the custom-op library (see :mod:`cepd_deploy.frontend.allocation`).
ALLOCATIONS = ("uniform", "ort-latency", "library-latency")
