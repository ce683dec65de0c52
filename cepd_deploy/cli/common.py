"""Helpers shared by the subcommands: model arguments, JSON output, output paths, the
environment latency is measured in."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from cepd_deploy.errors import CEPDError


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a CEPD model file (.pt) or a zoo name (e.g. resnet50)")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the one recorded in the file / the zoo's)")  # fmt: skip


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def output_path(path: str, *, suffix: str | None = None) -> Path:
    """Check an output file's folder exists (a user error otherwise)."""
    out = Path(path)
    if suffix and out.suffix != suffix:
        raise CEPDError(f"output file should end in {suffix}: {out}")
    if not out.parent.exists():
        raise CEPDError(f"output folder does not exist: {out.parent}")
    return out


def fraction(text: str) -> float:
    """argparse type: a fraction in (0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {v}")
    return v


#: True in the ``cepd-deploy`` process itself (its entry point sets it), which may re-execute
#: itself; False when ``main`` is called from Python (tests, notebooks).
COMMAND_PROCESS = False
HUGETLB = "glibc.malloc.hugetlb=1"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def hugepage_env(env: dict | None = None, thp_mode: Path = THP_MODE, libc: tuple | None = None
                 ) -> dict | None:  # fmt: skip
    """``env`` with glibc's malloc put on transparent huge pages (``GLIBC_TUNABLES`` +=
    glibc.malloc.hugetlb=1), or None where that does not apply: not glibc >= 2.35, THP off,
    already set, or opted out with ``CEPD_DEPLOY_HUGEPAGES=0``."""
    env = dict(os.environ if env is None else env)
    name, version = libc or platform.libc_ver()
    tunables = env.get("GLIBC_TUNABLES", "")
    if env.get("CEPD_DEPLOY_HUGEPAGES") == "0" or "glibc.malloc.hugetlb" in tunables or name != "glibc":
        return None
    try:
        if tuple(int(v) for v in version.split(".")[:2]) < (2, 35) or "[never]" in thp_mode.read_text():
            return None
    except (OSError, ValueError):
        return None
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGETLB}" if tunables else HUGETLB
    return env


def measure_on_hugepages() -> None:
    """Before a command measures latency, run it again with malloc on transparent huge pages.

    On 4 KB pages 9 of 31 ``bench`` processes on a 2-vCPU Zen 4 VM spent their whole life in a
    slow state: CEPD ResNet-50 models 25-45% slower than in the others, dense 5%; with huge pages,
    17 of 17 were in the normal state. Only the command's own process does this
    (``COMMAND_PROCESS``); ``CEPD_DEPLOY_HUGEPAGES=0`` opts out.
    """
    if COMMAND_PROCESS:
        reexec_on_hugepages(["-m", "cepd_deploy", *sys.argv[1:]])


def reexec_on_hugepages(args: list[str]) -> None:
    """Replace this process by ``python *args`` with malloc on huge pages, where
    :func:`hugepage_env` applies (benchmark scripts call it first thing)."""
    env = hugepage_env()
    if env is not None and sys.executable:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *args], env)
