"""A user's own network named by reference, as Python tools name objects: ``MODULE:ATTR``.

``MODULE`` is a dotted module importable from the current directory or ``sys.path``
(``pkg.nets:resnet_custom``) or a ``.py`` file path (``path/to/nets.py:MyNet``); ``ATTR`` is a
class subclassing ``nn.Module`` or a factory returning one, called with keyword arguments that are
plain JSON (``--model-args '{"num_classes": 10}'``). Resolving a reference imports and runs that
code: the caller decides whether it may (a reference typed by the user, yes; one recorded in a
model file, only with the user's consent, see :func:`cepd_deploy.model.format.load`).

>>> parse("pkg.nets:resnet_custom")
('pkg.nets', 'resnet_custom', False)
>>> parse("models/nets.py:MyNet")
('models/nets.py', 'MyNet', True)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha1
from pathlib import Path

from torch import nn

from cepd_deploy.errors import CEPDError
from cepd_deploy.untrusted import brief, clip

MAX_REF = 500  #: longest reference accepted (a path and a name)
MAX_ARGS_NODES = 10_000  #: values in a network's keyword arguments
MAX_ARGS_DEPTH = 16
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_NAME}(\.{_NAME})*")
#: packages whose functions are never a network factory (torch.load, torch.hub.load and
#: cpp_extension.load unpickle or run code); their nn.Module classes are accepted
CLASSES_ONLY = ("torch", "cepd_deploy")
FORMS = "MODULE:ATTR (a dotted module or a .py file, then a class or factory, e.g. pkg.nets:make_net)"


class NotFound(CEPDError):
    """The module or file a reference names is not there (``reason`` says what was looked for)."""

    def __init__(self, ref: str, reason: str, hint: str) -> None:
        super().__init__(f"cannot load network {ref}: {reason}; {hint}")
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    """A network by reference: ``ref`` (``MODULE:ATTR``) and its keyword arguments (None: none
    given, so a model file's recorded arguments apply)."""

    ref: str
    kwargs: dict | None = None


def looks_like(text: str) -> bool:
    """``text`` has the shape of a reference (``something:name``), right or wrong in detail."""
    head, sep, attr = text.rpartition(":")
    return bool(sep and head and attr) and "\n" not in text


def parse(ref: str) -> tuple[str, str, bool]:
    """``ref`` -> (module or file path, attribute path, is a file path); a one-line error if malformed.

    The attribute may be dotted (``nets:Zoo.small``) but no part may be a dunder name.
    """
    if not isinstance(ref, str) or not ref or len(ref) > MAX_REF or not ref.isprintable():
        raise CEPDError(f"bad network reference {brief(ref)}: expected {FORMS}")
    head, _, attr = ref.rpartition(":")
    is_file = head.endswith(".py")
    if not head or not _DOTTED.fullmatch(attr) or (not is_file and not _DOTTED.fullmatch(head)):
        raise CEPDError(f"bad network reference {brief(ref)}: expected {FORMS}")
    if any(p.startswith("__") and p.endswith("__") for p in attr.split(".")):
        raise CEPDError(f"bad network reference {brief(ref)}: {attr!r} is a Python internal, not a network")
    return head, attr, is_file


def parse_args(text: str | None, what: str = "--model-args") -> dict | None:
    """A JSON object of keyword arguments (``'{"num_classes": 10}'``) -> dict; None stays None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CEPDError(f"{what}: not JSON ({clip(str(exc), 100)}); give an object such as "
                        """'{"num_classes": 10}'""") from None  # fmt: skip
    return check_args(value, what)


def check_args(value, what: str = "--model-args") -> dict:
    """``value`` is a JSON object of keyword arguments: identifier keys, plain JSON values of a
    sane size (what a model file may record)."""
    if not isinstance(value, dict):
        example = """'{"num_classes": 10}'"""
        raise CEPDError(f"{what} must be a JSON object of keyword arguments, e.g. {example}, got "
                        f"{type(value).__name__} {brief(value)}")  # fmt: skip
    bad = [k for k in value if not isinstance(k, str) or not re.fullmatch(_NAME, k)]
    if bad:
        raise CEPDError(f"{what}: {brief(bad[0])} is not a keyword argument name")
    budget, todo = MAX_ARGS_NODES, [(v, 1) for v in value.values()]
    while todo:
        v, depth = todo.pop()
        budget -= 1 + (len(v) // 64 if isinstance(v, str) else 0)
        if budget < 0 or depth > MAX_ARGS_DEPTH:
            raise CEPDError(f"{what}: too large or too deeply nested")
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            todo.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, depth + 1) for x in v)
        elif v is not None and not isinstance(v, (bool, int, float, str)):
            raise CEPDError(f"{what}: {brief(v)} is not plain JSON data")
    return dict(value)


def build(ref: str, kwargs: dict | None = None) -> nn.Module:
    """Import ``ref``'s module (running its code), call its class or factory with ``kwargs`` and
    return the network in eval mode, carrying ``cepd_network = {"ref", "kwargs"}`` (what a model
    file records). Every failure is a one-line :class:`CEPDError` naming the reference."""
    head, attr, is_file = parse(ref)
    kwargs = check_args({} if kwargs is None else kwargs, f"{ref}: arguments")
    with _search_path(str(Path(head).resolve().parent) if is_file else os.getcwd()):
        module = _import_file(ref, Path(head)) if is_file else _import_module(ref, head)
        root = None if is_file else head.partition(".")[0]
        fn = _attribute(ref, module, attr, classes_only=root in CLASSES_ONLY)
        _bind(ref, fn, kwargs)
        try:
            model = fn(**kwargs)
        except (Exception, SystemExit) as exc:  # the user's code: any failure is theirs to read
            raise CEPDError(f"building {ref}{_call(kwargs)} raised {_why(exc)}") from None
    if not isinstance(model, nn.Module):
        raise CEPDError(f"{ref}{_call(kwargs)} returned {type(model).__name__}, not an nn.Module")
    if getattr(model, "cepd_arch", None) is None:  # a zoo model is recorded as such
        model.cepd_network = {"ref": ref, "kwargs": kwargs}
    return model.eval()


def label(ref: str) -> str:
    """The short name outputs of ``ref`` are labelled with: its attribute (``MyNet``)."""
    return ref.rpartition(":")[2].rpartition(".")[2] or ref


@contextmanager
def _search_path(folder: str):
    """``folder`` first on ``sys.path`` while the user's module imports and builds (as ``python``
    puts a script's folder first); the entry is taken out again afterwards."""
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass


def _import_module(ref: str, name: str):
    root = name.partition(".")[0]
    if root in getattr(sys, "stdlib_module_names", ()) or root in sys.builtin_module_names:
        raise CEPDError(f"{ref}: {root!r} is Python's standard library, not a network; name your own "
                        f"module's class or factory")  # fmt: skip
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        parts = name.split(".")
        if exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise NotFound(ref, f"no module named {exc.name!r} in the current directory ({os.getcwd()}) "
                           "or on sys.path", "run from the folder that holds it, or name its file "
                           "(path/to/nets.py:ATTR)") from None  # fmt: skip
        raise CEPDError(f"cannot load network {ref}: importing {name} raised {_why(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise CEPDError(f"cannot load network {ref}: importing {name} raised {_why(exc)}") from None


def _import_file(ref: str, path: Path):
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the current directory {os.getcwd()})"
        raise NotFound(ref, f"no file {path}{where}", "give the path to the file that defines it")
    full = path.resolve()
    stem = re.sub(r"[^A-Za-z0-9_]", "_", full.stem)
    name = f"_cepd_network_{sha1(str(full).encode()).hexdigest()[:12]}_{stem}"
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise CEPDError(f"cannot load network {ref}: {path} is not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # while it runs (dataclasses and the like look themselves up)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise CEPDError(f"cannot load network {ref}: running {path} raised {_why(exc)}") from None
    return module


def _attribute(ref: str, module, attr: str, classes_only: bool = False):
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n, v in vars(module).items() if not n.startswith("_") and _network_maker(v)
                     and getattr(v, "__module__", None) == module.__name__]  # fmt: skip
            has = f" (it defines: {', '.join(sorted(names)[:10])})" if names else ""
            raise CEPDError(f"cannot load network {ref}: {ref.rpartition(':')[0]} has no attribute "
                            f"{attr!r}{has}") from None  # fmt: skip
        except Exception as exc:  # a module-level __getattr__ of the user's
            raise CEPDError(f"cannot load network {ref}: reading {attr} raised {_why(exc)}") from None
    if inspect.isclass(obj):
        if not issubclass(obj, nn.Module):
            raise CEPDError(f"{ref} is a class but not an nn.Module subclass")
    elif not callable(obj):
        raise CEPDError(f"{ref} is a {type(obj).__name__}, not callable: name a network class or a "
                        "factory function returning one")  # fmt: skip
    elif inspect.isbuiltin(obj):
        raise CEPDError(f"{ref} is a built-in function, not a network class or factory")
    elif classes_only:
        raise CEPDError(f"{ref}: from {CLASSES_ONLY[0]} and {CLASSES_ONLY[1]} only nn.Module classes are "
                        "taken, not functions; name your own module's class or factory")  # fmt: skip
    return obj


def _network_maker(value) -> bool:
    return (inspect.isclass(value) and issubclass(value, nn.Module)) or inspect.isfunction(value)


def _bind(ref: str, fn, kwargs: dict) -> None:
    """The keyword arguments fit ``fn``'s signature (before any of its code runs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # no signature to check: the call itself reports
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        takes = [p.name for p in sig.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip
        raise CEPDError(f"{ref} does not take these arguments ({exc}); it takes: "
                        f"{', '.join(takes) or 'none'} (--model-args)") from None  # fmt: skip


def _call(kwargs: dict) -> str:
    return "(" + clip(", ".join(f"{k}={brief(v, 40)}" for k, v in kwargs.items()), 80) + ")"


def _why(exc: BaseException) -> str:
    """``Type: message (file, line N)`` of an exception raised in the user's code, on one line."""
    text = f"{type(exc).__name__}: {clip(str(exc), 160)}" if str(exc).strip() else type(exc).__name__
    if isinstance(exc, SyntaxError):
        return text
    frames = traceback.extract_tb(exc.__traceback__)
    ours = (sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).parents[1]))
    ours = tuple(str(Path(p).resolve()) + os.sep for p in ours)
    own = [f for f in frames if not f.filename.startswith("<")
           and not str(Path(f.filename).resolve()).startswith(ours)]  # fmt: skip
    for f in (own or frames)[-1:]:  # the user's own line where there is one, not torch's
        text += f" ({Path(f.filename).name}, line {f.lineno})"
    return text
