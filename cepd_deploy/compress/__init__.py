"""CEPD compression: ADMM with hard TT-rank and filter-count constraints, the baselines (direct,
S(L), L(S)), the training pipeline with checkpoint/resume and DDP, and the paper's analyses.

The names below are imported on first use (they load torch); :class:`CompressConfig` is light."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cepd_deploy import lazy
from cepd_deploy.compress.config import CompressConfig

#: public name -> the module that defines it (imported by :func:`__getattr__` on first use)
_LAZY = {
    "ADMM": "cepd_deploy.compress.admm",
    "Penalty": "cepd_deploy.compress.admm",
    "SplitConv2d": "cepd_deploy.compress.admm",
    "filter_project": "cepd_deploy.compress.admm",
    "layer_specs": "cepd_deploy.compress.admm",
    "to_cepd": "cepd_deploy.compress.admm",
    "to_split": "cepd_deploy.compress.admm",
    "Data": "cepd_deploy.compress.data",
    "load_data": "cepd_deploy.compress.data",
    "compress": "cepd_deploy.compress.pipeline",
}

if TYPE_CHECKING:
    from cepd_deploy.compress.admm import (
        ADMM,
        Penalty,
        SplitConv2d,
        filter_project,
        layer_specs,
        to_cepd,
        to_split,
    )
    from cepd_deploy.compress.data import Data, load_data
    from cepd_deploy.compress.pipeline import compress


__getattr__, __dir__ = lazy.attach(__name__, _LAZY)


__all__ = [
    "ADMM",
    "CompressConfig",
    "Data",
    "Penalty",
    "SplitConv2d",
    "compress",
    "filter_project",
    "layer_specs",
    "load_data",
    "to_cepd",
    "to_split",
]
