"""The project build checks what it generated before it reports success: every Python file
compiles, every Tcl script is complete and well-formed (with ``tclsh`` where it is installed, else
by the parser below). A label that escaped its quoting would fail here, not on the board.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cepd_deploy.errors import CEPDError

_SPACE = " \t\r\f\v"


class _Incomplete(Exception):
    pass


def tcl_well_formed(script: str) -> bool:
    """Whether ``script`` parses as Tcl: every brace, quote, bracket and ``${`` closed, and nothing
    glued to a closing brace or quote (Tcl's ``info complete`` plus its "extra characters" rule)."""
    try:
        end = _script(script, 0, nested=False)
    except _Incomplete:
        return False
    return end == len(script)


def _script(s: str, i: int, nested: bool) -> int:
    """Parse commands from ``i``; returns the index after the script (at the ``]`` if ``nested``)."""
    n = len(s)
    while i < n:
        while i < n and (s[i] in _SPACE or s[i] in "\n;" or s.startswith("\\\n", i)):  # between commands
            if s[i] == "\\" and i + 2 >= n:
                raise _Incomplete  # a continuation line that never comes
            i += 2 if s[i] == "\\" else 1
        if i < n and s[i] == "#":  # a comment runs to an unescaped newline
            while i < n and s[i] != "\n":
                if s[i] == "\\" and i + 1 >= n - 1:  # a continuation line that never comes
                    raise _Incomplete
                i += 2 if s[i] == "\\" else 1
            continue
        while i < n and s[i] not in "\n;":  # the words of one command
            if s[i] in _SPACE:
                i += 1
            elif s[i] == "\\" and i + 1 < n and s[i + 1] == "\n":
                if i + 2 >= n:
                    raise _Incomplete  # a continuation line that never comes
                i += 2
            elif nested and s[i] == "]":
                return i
            else:
                i = _word(s, i, nested)
        if nested and i >= n:
            raise _Incomplete
    if nested:
        raise _Incomplete
    return i


def _word(s: str, i: int, nested: bool) -> int:
    n = len(s)
    if s[i] == "{":
        depth, i = 1, i + 1
        while depth:
            if i >= n:
                raise _Incomplete
            c = s[i]
            depth += (c == "{") - (c == "}")
            i += 2 if c == "\\" else 1
        return _after_close(s, i, nested)
    if s[i] == '"':
        i += 1
        while True:
            if i >= n:
                raise _Incomplete
            if s[i] == '"':
                return _after_close(s, i + 1, nested)
            i = _char(s, i)
    while i < n and s[i] not in _SPACE and s[i] not in "\n;" and not (nested and s[i] == "]"):
        if s[i] == "\\" and i + 1 < n and s[i + 1] == "\n":
            return i  # a backslash-newline separates words
        i = _char(s, i)
    return i


def _char(s: str, i: int) -> int:
    """Skip one character of a quoted or bare word: an escape, a ``[script]`` or a ``${name}``."""
    c = s[i]
    if c == "\\":
        return i + 2
    if c == "[":
        end = _script(s, i + 1, nested=True)
        return end + 1
    if c == "$" and i + 1 < len(s) and s[i + 1] == "{":
        end = s.find("}", i + 2)
        if end < 0:
            raise _Incomplete
        return end + 1
    return i + 1


def _after_close(s: str, i: int, nested: bool) -> int:
    if i < len(s) and not (s[i] in _SPACE or s[i] in "\n;" or (nested and s[i] == "]")):
        raise _Incomplete  # "extra characters after close-brace/quote"
    return i


def _tclsh_complete(path: Path, tclsh: str) -> bool:
    """``info complete`` of the script in ``path`` by a real Tcl interpreter (read as data, never run)."""
    from cepd_deploy.targets.pynq_z1.escape import tcl_string

    probe = (f"set f [open {tcl_string(str(path))}]; fconfigure $f -encoding utf-8; set t [read $f]; "
             "close $f; puts [info complete $t]\n")  # fmt: skip
    try:
        r = subprocess.run([tclsh], input=probe.encode(), capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return True  # no working interpreter here: the parser's verdict stands
    return r.returncode != 0 or r.stdout.strip() != b"0"


def check_generated(folder: Path) -> None:
    """CEPDError naming the first generated Python or Tcl file of ``folder`` that does not parse."""
    for path in sorted(folder.rglob("*.py")):
        try:
            compile(path.read_text(encoding="utf-8"), str(path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            raise CEPDError(f"generated {path.name} does not parse ({getattr(exc, 'msg', exc)}): a name "
                            "from the model escaped its quoting; please report this") from None  # fmt: skip
    tclsh = shutil.which("tclsh")
    for path in sorted(folder.rglob("*.tcl")):
        text = path.read_text(encoding="utf-8")
        if not tcl_well_formed(text) or (tclsh and not _tclsh_complete(path, tclsh)):
            raise CEPDError(f"generated {path.name} is not a complete Tcl script: a name from the model "
                            "escaped its quoting; please report this")  # fmt: skip
