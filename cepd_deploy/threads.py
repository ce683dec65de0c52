"""Thread counts from users: at least 1, at most what this machine runs at once (with a notice).

A thread pool asked for 3000 threads aborts the process where thread creation hits a limit, and
onnxruntime asked for 100000 spends minutes creating them (or crashes); more threads than cores
only slow a compute-bound kernel down.

>>> clamp(1)
1
"""

from __future__ import annotations

import argparse
import os
import sys

from cepd_deploy.errors import CEPDError

_NOTED: set[tuple[str, int]] = set()


def machine_threads() -> int:
    """Hardware threads this process may run on (its CPU affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def clamp(n: int, what: str = "threads") -> int:
    """``n`` as a thread count: a CEPDError below 1 (or not an integer); above
    :func:`machine_threads`, that many, with a one-line notice on stderr (once per value)."""
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            if isinstance(n, bool) or int(n) != n:
                raise ValueError
            n = int(n)
        except (TypeError, ValueError, OverflowError):
            raise CEPDError(f"{what} must be a whole number >= 1, got {n!r}") from None
    if n < 1:
        raise CEPDError(f"{what} must be >= 1, got {n}")
    cap = machine_threads()
    if n > cap:
        if (what, n) not in _NOTED and os.environ.get("CEPD_DEPLOY_REEXECUTED") != "1":
            _NOTED.add((what, n))
            print(f"cepd-deploy: note: {what} {n} is more than the {cap} this machine runs at once; "
                  f"using {cap}", file=sys.stderr)  # fmt: skip
        return cap
    return n


def arg(text: str) -> int:
    """argparse type of ``--threads``: an integer >= 1, clamped to the machine (see :func:`clamp`)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return clamp(n, "--threads")
