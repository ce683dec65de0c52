"""Writing output files: whole or not at all, with the permissions any new file gets."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from cepd_deploy.errors import CEPDError


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], object] | bytes | str) -> Path:
    """Write ``path`` atomically: ``writer(f)`` (or the bytes / UTF-8 text ``writer``) goes to a
    temporary file beside it, which is then renamed over ``path``; on any failure the temporary
    file is removed and ``path`` is left as it was. The file gets the mode a plain ``open`` gives
    (0666 less the umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CEPDError(f"output folder does not exist: {path.parent}")
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:  # "x": a new file of ours (O_EXCL), mode 0666 less the umask
            f = open(tmp, "xb")  # closed by the with below
            break
        except FileExistsError:
            continue
    try:
        with f:
            if callable(writer):
                writer(f)
            else:
                f.write(writer.encode() if isinstance(writer, str) else writer)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
