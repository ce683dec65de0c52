"""Which files in an output folder a build made: a rebuild replaces those and nothing else.

A build that writes a folder records the files it generated, each with its SHA-256, in a
manifest. A later build into the same folder

* replaces the files the manifest lists that are unchanged since (and removes the ones it no
  longer generates);
* keeps every other file where it is (``overlay/*.bit``, ``*_hls/``, the user's own files);
* refuses, with a one-line error naming them, when it would overwrite a file it did not generate
  or one the user changed since it generated it.

It also removes what killed runs leave behind (hidden temporary files and folders of its own
naming, older than an hour): :func:`sweep_stale`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from cepd_deploy.errors import CEPDError

STALE_S = 3600  # a temporary file or folder older than this is left from a run that was killed
_SHOWN = 4  # names listed in an error before "and N more"


def digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def listing(folder: Path, skip: Iterable[str] = ()) -> list[str]:
    """Every file below ``folder`` (POSIX paths relative to it), sorted; ``skip``: names left out."""
    skip = set(skip)
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        out += [(rel / f).as_posix() for f in files if (rel / f).as_posix() not in skip]
        dirs.sort()
    return sorted(out)


def names(paths: Iterable[str]) -> str:
    """``a, b, c, d and 3 more``."""
    paths = sorted(paths)
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def changed(folder: Path, files: dict[str, str | None]) -> list[str]:
    """The files of a manifest (path -> digest, None: any content) that are there with other
    content than recorded (a user's edit), or are no longer plain files."""
    bad = []
    for rel, want in files.items():
        p = folder / rel
        if p.is_symlink() or (p.exists() and not p.is_file()):
            bad.append(rel)
        elif p.is_file() and want is not None and digest(p) != want:
            bad.append(rel)
    return bad


def sweep_stale(folder: Path, pattern: str, *, age: float = STALE_S, now: float | None = None) -> int:
    """Remove the entries of ``folder`` whose names match the regular expression ``pattern``
    (whole name) and that were last modified more than ``age`` seconds ago; returns how many.
    Errors (permissions, a concurrent removal) are ignored: the sweep is a courtesy."""
    now = time.time() if now is None else now
    regex = re.compile(pattern)
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        if not regex.fullmatch(e.name):
            continue
        try:
            if now - e.stat(follow_symlinks=False).st_mtime <= age:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed += 1
        except OSError:
            continue
    return removed


def io_error(exc: OSError, what: str) -> CEPDError:
    """A one-line user error for an OSError while writing ``what``."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return CEPDError(f"cannot write {what}: {exc.strerror or exc}{where}")
