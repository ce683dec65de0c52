"""Hardware data shipped with cepd-deploy: accelerator specs (eyeriss/) and the PYNQ-Z1 HLS
engine, templates and board description (pynq_z1/). Installed as ``cepd_deploy.hw``."""

from __future__ import annotations

from pathlib import Path


def path(*parts: str) -> Path:
    """A file or folder under hw/, e.g. ``path("eyeriss", "eyeriss_v1.yaml")``."""
    return Path(__file__).resolve().parent.joinpath(*parts)
