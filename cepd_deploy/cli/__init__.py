"""The ``cepd-deploy`` command: parse, call the library, print. One module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from cepd_deploy import __version__
from cepd_deploy.errors import CEPDError

#: Subcommand modules under ``cepd_deploy.cli``; each defines ``register(subparsers)``, which
#: adds its parser and sets ``func`` (called with the parsed args; returns an exit code).
COMMANDS = ["demo", "convert", "inspect", "compress", "analyze", "export", "build", "simulate", "bench",
            "doctor"]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The ``cepd-deploy`` parser, one subparser per module of :data:`COMMANDS` shipped in this build."""
    p = _Parser(
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
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code: 2 after a
    one-line error or with no command (the help printed), 130 on Ctrl-C."""
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
    except OSError as exc:  # a file system refusal the command did not foresee: still one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"cepd-deploy: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cepd-deploy: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``cepd-deploy`` command (console script and ``python -m cepd_deploy``)."""
    from cepd_deploy import process
    from cepd_deploy.cli import common

    process.configure()  # before any command loads torch
    common.COMMAND_PROCESS = True
    if sys.argv[1:2] != ["doctor"]:
        _note_missing_native_libraries()
    sys.exit(main())


def _note_missing_native_libraries(record: Path | None = None) -> None:
    """One stderr line per native library the install could not build (pip shows a successful
    build's warnings only with -v, so the user learns it here)."""
    import json

    record = record or Path(__file__).resolve().parents[1] / "_build_record.json"
    try:
        extensions = json.loads(record.read_text()).get("extensions") or {}
    except (OSError, ValueError, AttributeError):
        return
    for name, entry in extensions.items():
        if isinstance(entry, dict) and not entry.get("built"):
            why = str(entry.get("error") or "unknown reason")[:200]
            print(f"cepd-deploy: note: {name} was not built ({why}); stock onnxruntime runs instead "
                  "(cepd-deploy doctor)", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    entry()
