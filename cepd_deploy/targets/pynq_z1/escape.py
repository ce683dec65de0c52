"""Quoting for generated code: nothing from a model file reaches C++, Tcl, Make, Python or
Markdown unescaped. Each function returns a complete literal (or a safe identifier).

>>> print(tcl_string('a"; exec [x] $y'))
"a\\"\\; exec \\[x\\] \\$y"
>>> identifier("layer1.0/conv(1)")
'layer1_0_conv_1'
"""

from __future__ import annotations

import re

_C_SIMPLE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "?": "\\?"}


def c_string(s: str) -> str:
    """A C/C++ string literal: printable ASCII kept, quotes, backslashes, '?' (trigraphs) and
    everything else escaped (non-ASCII as UTF-8 octal bytes)."""
    out = []
    for ch in s:
        if ch in _C_SIMPLE:
            out.append(_C_SIMPLE[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
    return '"' + "".join(out) + '"'


def tcl_string(s: str) -> str:
    """A double-quoted Tcl word whose value is ``s``: every character Tcl would substitute or
    that ends a word or command is backslash-escaped, control and non-ASCII as \\u/\\U."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '\\"$[]{};':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif 32 <= o < 127:
            out.append(ch)
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return '"' + "".join(out) + '"'


def identifier(s: str, default: str = "model", max_len: int = 48) -> str:
    """A C/Tcl/Vivado/file-name-safe identifier: [A-Za-z_][A-Za-z0-9_]*."""
    ident = re.sub(r"[^A-Za-z0-9_]+", "_", s).strip("_")[:max_len].strip("_")
    if not ident:
        return default
    return ident if not ident[0].isdigit() else f"m_{ident}"


def py_string(s: str) -> str:
    """A Python string literal."""
    return repr(str(s))


def py_doc(s: str) -> str:
    """A Python string literal that can also stand inside a triple-double-quoted docstring (no
    ``"`` unescaped, so a label holding ``\"\"\"`` cannot end the docstring)."""
    return py_string(s).replace('"', '\\"')


def md_code(s: str) -> str:
    """A Markdown code span showing ``s`` verbatim (backslashes are literal in a code span, so
    nothing is escaped): fenced by one backtick more than the longest run inside it, newlines
    folded to spaces."""
    s = re.sub(r"[\r\n\t]+", " ", str(s))
    fence = "`" * (max((len(r) for r in re.findall("`+", s)), default=0) + 1)
    if not s.strip(" "):
        return f"`{s or ' '}`"  # spaces only: shown as they are
    pad = " " if s[:1] in ("`", " ") or s[-1:] in ("`", " ") else ""  # CommonMark strips one each side
    return f"{fence}{pad}{s}{pad}{fence}"


def md_text(s: str) -> str:
    """Text for a Markdown table cell or line: no newlines, pipes, backticks or HTML."""
    s = re.sub(r"[\r\n\t]+", " ", str(s))
    for ch in "\\|`*_[]<>#":
        s = s.replace(ch, "\\" + ch)
    return s
