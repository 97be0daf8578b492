"""The layers of docs/architecture.md, checked by reading every module's imports with `ast`.

Each module belongs to one layer; a layer may import only the layers listed for it (never a
higher one), and no modules import each other in a circle. Imports under `if TYPE_CHECKING:` are
left out: they are annotations for type checkers, never run, so they can name an owner (the vCPU
names its machine) without making a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "apfdbg"

#: module name prefix -> layer (the longest prefix wins)
LAYER_OF = {
    "apfdbg": "base", "apfdbg.eventbase": "base",
    "apfdbg.machine": "machine",
    "apfdbg.kvm": "kvm",
    "apfdbg.host": "host",
    "apfdbg.events": "schema", "apfdbg.trace": "schema",
    "apfdbg.scenario": "scenario", "apfdbg.scenarios": "scenario",
    "apfdbg.debug": "debug",
    "apfdbg.engine": "engine",
    "apfdbg.ui": "ui",
    "apfdbg.gdbstub": "gdbstub",
    "apfdbg.headless": "headless",
    "apfdbg.cli": "cli", "apfdbg.lifecycle": "cli", "apfdbg.serve": "cli", "apfdbg.__main__": "cli", "apfdbg.gdbstub.__main__": "cli",
}
#: what each layer may import (besides itself)
MAY_IMPORT = {
    "base": set(),
    "machine": {"base"},
    "kvm": {"base"},
    "host": {"base", "machine", "kvm"},
    "schema": {"base", "machine", "kvm"},
    "scenario": {"base", "machine", "host", "schema"},
    "debug": {"base", "machine", "schema", "scenario"},
    "engine": {"base", "machine", "kvm", "host", "schema", "scenario", "debug"},
    "ui": {"base", "schema", "scenario", "debug", "engine"},
    "headless": {"base", "machine", "schema", "engine"},
    "gdbstub": {"base", "machine", "schema", "scenario", "debug", "engine", "ui"},
    "cli": {"base", "machine", "kvm", "host", "schema", "scenario", "debug", "engine", "ui", "headless",
            "gdbstub"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str) -> set[str]:
    """The apfdbg modules `name` imports at run time (lazy imports inside functions included)."""
    path = MODULES[name]
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[:len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)
            return
        for t in targets:
            while t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in MODULES and t != name and t.startswith("apfdbg"):
                found.add(t)

    visit(ast.parse(path.read_text()))
    return found


def layer(name: str) -> str:
    best = max((p for p in LAYER_OF if name == p or name.startswith(p + ".")), key=len)
    return LAYER_OF[best]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        assert layer(name) in MAY_IMPORT, name
    assert layer("apfdbg.machine.devices.apic") == "machine" and layer("apfdbg.gdbstub.__main__") == "cli"


def test_no_import_goes_to_a_layer_it_may_not_use() -> None:
    wrong = []
    for name in sorted(MODULES):
        mine = layer(name)
        for dep in sorted(_imports(name)):
            theirs = layer(dep)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{name} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {name: _imports(name) for name in MODULES}
    # a package's __init__ re-exporting its own submodules is not a cycle with them
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not (MODULES[d].name == "__init__.py" and name.startswith(d + "."))}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:   # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, cycles


def test_the_checker_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    """A broken checker would pass everything: it must see an import inside a function (engine
    commands import the machine's fault types there) and skip TYPE_CHECKING blocks."""
    assert "apfdbg.machine.debug" in _imports("apfdbg.machine.vcpu")          # lazy, in a method
    assert "apfdbg.machine.vcpu" not in _imports("apfdbg.machine.debug")      # TYPE_CHECKING only
    assert "apfdbg.engine.snapshot" in _imports("apfdbg.engine.runloop")
