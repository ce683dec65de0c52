"""The ``cepd-deploy`` command: parse, call the library, print. One module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

from cepd_deploy import __version__
from cepd_deploy.errors import CEPDError

#: Subcommand modules under ``cepd_deploy.cli``; each defines ``register(subparsers)``, which
#: adds its parser and sets ``func`` (called with the parsed args; returns an exit code).
COMMANDS = ["demo", "convert", "inspect", "compress", "analyze", "export", "build", "simulate", "bench"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cepd-deploy",
        description="Deploy CNNs compressed with CEPD (TT low-rank + filter-sparse) to CPUs, "
        "GPUs, FPGAs (PYNQ-Z1) and ASIC simulators (Eyeriss).",
    )
    p.add_argument("--version", action="version", version=f"cepd-deploy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cepd_deploy.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cepd_deploy.cli.{name}":
                continue  # a command not shipped in this build
            raise
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CEPDError as exc:
        print(f"cepd-deploy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cepd-deploy: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``cepd-deploy`` command (console script and ``python -m cepd_deploy``)."""
    from cepd_deploy.cli import common

    common.COMMAND_PROCESS = True
    sys.exit(main())


if __name__ == "__main__":
    entry()
