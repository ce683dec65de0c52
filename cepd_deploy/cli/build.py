"""``cepd-deploy build``: a deployable artifact of a model for one target (every target that
builds: the PYNQ-Z1 HLS project, a TVM library, an ONNX file)."""

from __future__ import annotations

import argparse
import sys

from cepd_deploy.cli.common import add_json_arg, add_model_arg, model_options, print_json
from cepd_deploy.cli.options import add_target_options, options_for
from cepd_deploy.errors import CEPDError


def register(sub) -> None:
    """Add ``build`` to the subparsers ``sub``, with the options of every target that builds."""
    from cepd_deploy import targets

    builders = [t for t in targets.all_targets() if t.can("build")]
    aliases = {alias: name for alias, name in targets.ALIASES.items()}
    listing = "; ".join(f"{t.name}: {t.summary}" for t in builders)
    p = sub.add_parser(
        "build",
        help="build a deployable artifact for a target (pynq-z1: an HLS overlay project)",
        description=f"Build what a target needs to run MODEL into a folder. Targets: {listing}.",
    )
    add_model_arg(p)
    names = [t.name for t in builders] + [f"{a} (= {n})" for a, n in aliases.items()]
    p.add_argument("--target", required=True, metavar="NAME", help=f"one of: {', '.join(names)}")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (created; a rebuild replaces only the files build made)")  # fmt: skip
    add_target_options(p, builders)
    add_json_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``build``: build ``args.model`` for ``args.target`` into ``args.output`` and print the result;
    1 where the build's own checks failed."""
    from cepd_deploy import targets

    target = targets.get(args.target)
    if not target.can("build"):
        raise CEPDError(f"target {target.name!r} ({target.kind.value}) does not build; targets that build: "
                        f"{', '.join(targets.names('build'))}")  # fmt: skip
    from cepd_deploy.frontend.load import load_plan

    loaded = load_plan(args.model, **model_options(args))
    options = options_for(target, args, label=getattr(args, "label", None) or loaded.label)
    built = target.build(loaded.plan, args.output, options)
    if args.json:
        print_json(built.figures)
    else:
        print(built.text)
    if not built.ok:
        print(f"cepd-deploy: {built.problem}", file=sys.stderr)
        return 1
    return 0
