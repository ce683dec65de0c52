"""The project's on-disk cache (tuning records, measured latencies, compiled C-simulation engines):
one environment variable, and the rules every entry follows.

An entry is checked before it is used (its schema, finite non-negative figures, the SHA-256 of
cached binaries); a damaged one is discarded with a one-line notice on stderr and rebuilt, so a
torn write, a full disk or a planted file costs one rebuild, never every later run.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

from cepd_deploy.errors import CEPDError

CACHE_ENV = "CEPD_DEPLOY_CACHE"


def cache_root(default_sub: str = "") -> Path:
    """$CEPD_DEPLOY_CACHE if set, else ~/.cache/cepd-deploy/``default_sub``. A CEPDError if it (or
    the nearest existing folder above it) is a file: nothing could be cached there."""
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "cepd-deploy" / default_sub
    p = root
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        where = f"${CACHE_ENV}={env}" if env else str(root)
        raise CEPDError(f"the cache folder {where} cannot be used: {p} is a file, not a folder")
    return root


def ensure_dir(path: Path) -> Path:
    """``path`` created as a folder (with its parents), or a one-line CEPDError saying why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CEPDError(f"cannot create the cache folder {path}: {exc.strerror or exc}") from None
    return path


def notice(msg: str) -> None:
    """One line on stderr about the cache (a discarded entry)."""
    print(f"cepd-deploy: note: {msg}", file=sys.stderr, flush=True)


def discard(path: Path, why: str, what: str = "cache entry") -> None:
    """Remove a damaged cache entry (file or folder) with a notice saying it will be rebuilt."""
    notice(f"discarding the damaged {what} {path} ({why}); it is rebuilt")
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # another process may be replacing it; the entry is not used either way


def figure(v, *, positive: bool = False) -> bool:
    """Whether ``v`` is a real number (not bool), finite and >= 0 (> 0 with ``positive``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return math.isfinite(v) and (v > 0 if positive else v >= 0)
