"""The import structure: packages form layers (each imports only those below it), no module
imports a module that imports it back, and the Target contract holds for every registered target."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cepd_deploy"

#: package -> the layer it sits in; a package may import only from lower layers or its own
LAYERS = {
    "errors": 0, "cpu": 0, "files": 0, "lazy": 0, "names": 0, "process": 0, "threads": 0, "untrusted": 0,
    "ownership": 0, "cache": 0, "hw": 0,
    "tt": 1,
    "plan": 2,
    "native": 3, "model": 3,
    "targets": 4,
    "frontend": 5,
    "compress": 6,
    "bench": 7,
    "demo": 8,
    "cli": 9, "": 9, "__main__": 10,  # "": the package's lazy public API (cepd_deploy/__init__.py)
}  # fmt: skip


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports() -> dict[str, set[str]]:
    """module -> the cepd_deploy modules it imports when it runs (at any depth of the file)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        mod = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cepd_deploy"):
                out[mod].add(node.module)
                out[mod].update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                out[mod].update(a.name for a in node.names if a.name.startswith("cepd_deploy"))
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_packages_import_only_lower_layers():
    bad = []
    for mod, targets in _imports().items():
        src = _package(mod)
        if src not in LAYERS:
            bad.append(f"{mod}: package {src!r} has no layer")
            continue
        for t in targets:
            dst = _package(t)
            if dst and dst != src and dst in LAYERS and LAYERS[dst] > LAYERS[src]:
                bad.append(f"{mod} imports {t}")
    assert bad == []


def test_target_packages_do_not_import_each_other():
    bad = []
    for mod, targets in _imports().items():
        parts = mod.split(".")
        if len(parts) > 2 and parts[1] == "targets" and parts[2] not in ("base", "__init__"):
            for t in targets:
                tp = t.split(".")
                if len(tp) > 2 and tp[1] == "targets" and tp[2] not in ("base", parts[2]):
                    bad.append(f"{mod} imports {t}")
    assert bad == []


def test_no_circular_imports():
    """No module reaches itself through the modules it imports (at any depth)."""
    graph = _imports()
    modules = set(graph)
    edges = {m: {t for t in graph[m] if t in modules and t != m} for m in modules}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1 and not m.startswith(t + ".") and not t.startswith(m + "."):
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_every_registered_target_keeps_the_contract():
    from cepd_deploy import targets
    from cepd_deploy.targets.base import Kind, Target

    expected = {Kind.RUNTIME: {"runner"}, Kind.SIMULATOR: {"estimate"}, Kind.MODEL: {"build", "estimate"},
                Kind.COMPILER: {"build"}}  # fmt: skip
    for name in targets.REGISTRY:
        t = targets.get(name)
        assert isinstance(t, Target) and t.name == name
        assert expected[t.kind] <= set(t.verbs()), name
        assert t.summary and t.ops


#: what the code did before the contracts: name matching, per-target branches, untyped attributes
FORBIDDEN = ['endswith(".s")', "TVM_KINDS", "SIMULATORS", "def cli(args", "TargetInfo", "_KeyAccess",
             "def attr("]  # fmt: skip


@pytest.mark.parametrize("pattern", FORBIDDEN)
def test_no_name_matching_or_per_target_branches(pattern):
    hits = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if pattern in p.read_text()]
    assert hits == []
