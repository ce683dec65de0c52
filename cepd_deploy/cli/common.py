"""Helpers shared by the subcommands: model arguments, JSON output, output paths, the
environment latency is measured in."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

from cepd_deploy.errors import CEPDError

#: MODEL's help: what a model argument may be
MODEL_HELP = ("a CEPD model file (.pt), a zoo name (e.g. resnet50) or your own network as MODULE:ATTR: "
              "pkg.nets:make_net (a module importable from the current directory or sys.path) or "
              "path/to/nets.py:MyNet, a class or factory returning an nn.Module; naming it imports and "
              "runs that code")  # fmt: skip


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """Add the MODEL argument and its options (:func:`add_model_options`) to ``p``."""
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    add_model_options(p)


def add_model_options(p: argparse.ArgumentParser, *, template: bool = True) -> None:
    """Add ``--input-shape C H W``, ``--model-args JSON`` and (``template``) ``--template
    MODULE:ATTR`` and ``--trust-model-code``, the options of a model argument, to ``p``."""
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the one recorded in the file / the zoo's; required for "
                   "a MODULE:ATTR network)")  # fmt: skip
    p.add_argument("--model-args", metavar="JSON",
                   help="""keyword arguments of a MODULE:ATTR network (or --template) as a JSON object, """
                   """e.g. '{"num_classes": 10}'; recorded in the model files made from it""")  # fmt: skip
    if not template:
        return
    p.add_argument("--template", metavar="MODULE:ATTR",
                   help="build a model file's network from this class or factory (with --model-args, "
                   "else the file's recorded arguments), not from the reference it records")  # fmt: skip
    p.add_argument("--trust-model-code", action="store_true",
                   help="build the network a model file records as MODULE:ATTR by importing and "
                   "running that code (a file made from your own network needs it; trust the file "
                   "first)")  # fmt: skip


def model_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``resolve``/``load_plan`` from the options of a model argument."""
    from cepd_deploy.model.reference import parse_args

    return {"input_shape": getattr(args, "input_shape", None),
            "model_args": parse_args(getattr(args, "model_args", None)),
            "template": getattr(args, "template", None),
            "trust_code": bool(getattr(args, "trust_model_code", False))}  # fmt: skip


def add_json_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--json`` (print the figures as one JSON object) to ``p``."""
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def print_json(obj) -> None:
    """Print ``obj`` as indented JSON (arrays as lists, paths as strings)."""
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def output_path(path: str, *, suffix: str | None = None) -> Path:
    """Check an output file can be written (a one-line user error otherwise): its folder exists
    and takes new files, and the path is not a folder. Removes the hidden temporary files that
    killed runs left beside it (``.NAME.*.tmp``, older than an hour)."""
    from cepd_deploy.ownership import sweep_stale

    out = Path(path)
    if suffix and out.suffix != suffix:
        raise CEPDError(f"output file should end in {suffix}: {out}")
    if not out.parent.exists():
        raise CEPDError(f"output folder does not exist: {out.parent}")
    if out.is_dir():
        raise CEPDError(f"output path is a folder, not a file: {out}")
    if not out.parent.is_dir():
        raise CEPDError(f"output folder is not a folder: {out.parent}")
    try:  # the write itself comes later, after the work: find out now whether it can happen
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise CEPDError(f"cannot write to the output folder {out.parent}: {exc.strerror or exc}") from None
    sweep_stale(out.parent, rf"\.{re.escape(out.name)}\.[0-9a-z_]{{8}}\.tmp")
    return out


def _whole(text: str, minimum: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole(text, 1)


def count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole(text, 0)


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
        reexec_on_hugepages(command_argv(sys.argv[1:]))


#: How the command re-executes itself: never ``-m cepd_deploy``, which would import a
#: ``cepd_deploy`` folder from the current directory first; instead the package folder this
#: process runs is put first on ``sys.path`` (replacing the current directory's entry).
_BOOT = ("import sys; p = sys.argv.pop(1); "
         "sys.path[:1] = [p] if sys.path[:1] == [''] else [p, *sys.path[:1]]; "
         "from cepd_deploy.cli import entry; entry()")  # fmt: skip


def command_argv(args: list[str]) -> list[str]:
    """Interpreter arguments that run this very ``cepd_deploy`` package's command with ``args``,
    whatever the current directory holds (``-P`` where Python has it, and an explicit path)."""
    import cepd_deploy

    root = str(Path(cepd_deploy.__file__).resolve().parent.parent)
    return [*(["-P"] if sys.version_info >= (3, 11) else []), "-c", _BOOT, root, *args]


def reexec_on_hugepages(args: list[str]) -> None:
    """Replace this process by ``python *args`` with malloc on huge pages, where
    :func:`hugepage_env` applies (benchmark scripts call it first thing)."""
    env = hugepage_env()
    if env is not None and sys.executable:
        sys.stdout.flush()
        sys.stderr.flush()
        env["CEPD_DEPLOY_REEXECUTED"] = "1"  # notices already printed are not printed again
        os.execve(sys.executable, [sys.executable, *args], env)
