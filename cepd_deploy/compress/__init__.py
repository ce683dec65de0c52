"""CEPD compression: ADMM with hard TT-rank and filter-count constraints, the baselines (direct,
S(L), L(S)), the training pipeline with checkpoint/resume and DDP, and the paper's analyses."""

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
from cepd_deploy.compress.pipeline import CompressConfig, compress

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
