"""Environment variables of the processes this project starts (the ``cepd-deploy`` command, the
benchmark scripts), set before torch or onnxruntime load. ``import cepd_deploy`` sets none: a
program that imports the library decides its own.

``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP threads spin while idle by default; next to
onnxruntime's threads in one process that made eager torch up to 20x slower on a 2-core machine.
A value the user set wins. (OpenMP reads it once, when torch is first imported.)
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: variable -> value, each set only where the user has not set it
PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def configure(env: MutableMapping[str, str] | None = None) -> None:
    """Set :data:`PROCESS_ENV` in ``env`` (default ``os.environ``) where unset; call it first thing."""
    env = os.environ if env is None else env
    for name, value in PROCESS_ENV.items():
        env.setdefault(name, value)
