"""Helpers shared by the subcommands: model arguments, JSON output, output paths."""

from __future__ import annotations

import argparse
import json
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
