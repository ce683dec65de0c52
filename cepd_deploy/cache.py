"""The project's on-disk cache (tuning records, measured latencies): one environment variable."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CEPD_DEPLOY_CACHE"


def cache_root(default_sub: str = "") -> Path:
    """$CEPD_DEPLOY_CACHE if set, else ~/.cache/cepd-deploy/``default_sub``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cepd-deploy" / default_sub
