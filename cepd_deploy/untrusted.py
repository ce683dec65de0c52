"""Reading files a user hands the tool (specs, rank configs): bounded, strict, one-line errors.

YAML is parsed with PyYAML's safe loader, restricted further: no anchors or aliases (no
"billion laughs"), no duplicate keys (PyYAML keeps the last silently), a bounded nesting depth
(no RecursionError) and node count, and a bounded file size, checked before anything is parsed.
Every refusal is a :class:`CEPDError`; values quoted in messages go through :func:`brief`.

>>> brief("x" * 1000, 12)
"'xxxxxxxx..."
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cepd_deploy.errors import CEPDError

MAX_BYTES = 256 << 10  #: largest spec or config file read (the shipped ones are a few KB)
MAX_DEPTH = 32  #: deepest nesting of mappings and lists
MAX_NODES = 20_000  #: most YAML nodes (scalars, lists, mappings) in one document


def brief(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that a message stays one short line.

    Very large containers are not rendered whole first: their repr is cut from a bounded prefix.
    """
    if isinstance(value, dict) and len(value) > limit:
        value = dict(list(value.items())[:limit])
    elif isinstance(value, (list, tuple)) and len(value) > limit:
        value = list(value[:limit])
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a self-nesting value, or an int too long to print
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def clip(text: str, limit: int = 120) -> str:
    """The first line of ``text``, cut to ``limit`` characters (for messages quoting errors)."""
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: max(limit - 3, 1)] + "..."


def read_text(path: str | Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of a small file, refused (before reading it all) past ``max_bytes``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except IsADirectoryError:
        raise CEPDError(f"{what} {path} is a folder, not a file") from None
    except FileNotFoundError:
        raise CEPDError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise CEPDError(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > max_bytes:
        raise CEPDError(f"{path.name}: {what} larger than {max_bytes // 1024} KiB; refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CEPDError(f"{path.name}: {what} is not UTF-8 text (byte {exc.start})") from None


def load_yaml(path: str | Path, what: str = "YAML file", max_bytes: int = MAX_BYTES) -> object:
    """Read and parse a YAML file under the restrictions of :func:`parse_yaml`."""
    return parse_yaml(read_text(path, what, max_bytes), Path(path).name)


def parse_yaml(text: str, where: str = "<yaml>") -> object:
    """Parse one YAML document: safe types only, no anchors/aliases, unique keys, bounded size."""
    import yaml

    if len(text) > MAX_BYTES:
        raise CEPDError(f"{where}: YAML text larger than {MAX_BYTES // 1024} KiB; refused")
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506  (a SafeLoader subclass)
    except _Refused as exc:
        raise CEPDError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise CEPDError(f"{where}: not valid YAML: {clip(str(problem))}{at}") from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:  # e.g. an int of 10^5 digits
        raise CEPDError(f"{where}: not valid YAML: {clip(str(exc))}") from None


def parse_json(text: str, where: str = "<json>") -> object:
    """Parse JSON with unique keys and a bounded nesting depth (no RecursionError)."""

    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise _Refused(f"duplicate key {brief(key)}")
            out[key] = value
        return out

    if len(text) > MAX_BYTES:
        raise CEPDError(f"{where}: JSON text larger than {MAX_BYTES // 1024} KiB; refused")
    if _json_depth(text) > MAX_DEPTH:
        raise CEPDError(f"{where}: nested deeper than {MAX_DEPTH} levels; refused")
    try:
        return json.loads(text, object_pairs_hook=pairs)
    except _Refused as exc:
        raise CEPDError(f"{where}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise CEPDError(f"{where}: not valid JSON: {clip(str(exc))}") from None


def _json_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (an upper bound is enough)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def finite_number(value: object) -> bool:
    """A real int or float (not a bool), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _name(anchor: str) -> str:
    return clip(str(anchor), 30)


class _Refused(Exception):
    """A restriction of the strict loader (turned into a CEPDError naming the file)."""


_LOADER = None


def _strict_loader():
    """PyYAML's SafeLoader without anchors, aliases or duplicate keys, with bounded depth and size."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def __init__(self, stream) -> None:
            super().__init__(stream)
            self._depth = 0
            self._nodes = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            line = event.start_mark.line + 1 if event.start_mark is not None else 0
            if isinstance(event, yaml.AliasEvent):
                raise _Refused(f"line {line}: YAML aliases (*{_name(event.anchor)}) are not allowed")
            if getattr(event, "anchor", None) is not None:
                raise _Refused(f"line {line}: YAML anchors (&{_name(event.anchor)}) are not allowed")
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} YAML values; refused")
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise _Refused(f"line {line}: nested deeper than {MAX_DEPTH} levels; refused")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _Refused(f"line {line}: YAML merge keys (<<) are not allowed")
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise _Refused(f"line {line}: a mapping key must be a plain value") from None
                if key in seen:
                    raise _Refused(f"line {line}: duplicate key {brief(key)}")
                seen.add(key)
            return super().construct_mapping(node, deep)

    _LOADER = StrictLoader
    return _LOADER
