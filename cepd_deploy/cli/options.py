"""Target options on the command line: every field of the options dataclass of the targets a
command runs becomes one flag (``clock_mhz`` -> ``--clock-mhz``), with the field's help and the
targets that take it. A target with new options needs no CLI change."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from cepd_deploy.targets.base import Target


def add_target_options(p: argparse.ArgumentParser, targets: Sequence[Target]) -> None:
    """Add a flag for each option of ``targets`` (their defaults apply when a flag is absent)."""
    fields: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for t in targets:
        for f in dataclasses.fields(t.Options):
            fields.setdefault(f.name, (f, []))[1].append(t.name)
    group = p.add_argument_group("target options")
    for name, (f, users) in fields.items():
        meta, default = f.metadata, f.default
        where = "" if len(users) == len(targets) else f" [{', '.join(users)}]"
        shown = "" if default in (None, ()) or isinstance(default, bool) else f" (default {default})"
        kw: dict = {"default": None, "help": f"{meta.get('help', '')}{shown}{where}".replace("%", "%%")}
        if isinstance(default, bool):
            kw["action"] = "store_true"
        else:
            kw["type"] = meta.get("type") or (type(default) if default is not None else str)
            if "choices" in meta:
                kw["choices"] = meta["choices"]
            kw["metavar"] = meta.get("metavar", name.upper())
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, **kw)


def options_for(target: Target, args: argparse.Namespace, **extra):
    """``target``'s options from the parsed flags (flags left out keep the option's default)."""
    return target.options(vars(args), **extra)
