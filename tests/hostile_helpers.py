"""Guards for the hostile-input tests (no tests here): a memory cap and a time limit around one
case in this process, and the CLI run in a capped subprocess."""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cepd_deploy.errors import CEPDError

CAP = 2 << 30  #: what one hostile case may allocate beyond what the process already maps


class TooSlow(Exception):
    """A case ran past its time limit."""


def _mapped() -> int:
    """Bytes of address space this process maps now (VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def capped(seconds: float = 30.0, extra: int = CAP) -> Iterator[None]:
    """Run the body with at most ``extra`` more bytes of address space (an allocation past it
    fails, it does not take the machine) and at most ``seconds`` of wall time (main thread)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def alarm(*_):
        raise TooSlow(f"ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def one_line_or_success(fn, *args, seconds: float = 30.0, **kwargs):
    """Call ``fn`` capped; it must return or raise a one-line CEPDError (returned), nothing else."""
    try:
        with capped(seconds):
            return fn(*args, **kwargs)
    except CEPDError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 400, message
        return exc
    except TooSlow as exc:
        pytest.fail(f"{fn.__name__}: {exc}")


def cli_capped(args: list[str], *, cwd: Path, seconds: float = 120.0, cap: int = CAP):
    """``python -m cepd_deploy ARGS`` in a subprocess under RLIMIT_AS=cap and a time limit."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run([sys.executable, "-m", "cepd_deploy", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=seconds, preexec_fn=limit)  # fmt: skip


def assert_one_line_error(proc, *needles: str) -> None:
    """Exit 2 and exactly one line on stderr, ``cepd-deploy: error: ...`` holding each needle."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("cepd-deploy: error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
