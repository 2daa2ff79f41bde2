"""The layer rules of DESIGN.md, checked on fedhet's import graph (parsed with ``ast``).

Rules (every import counts, including those inside functions and under ``TYPE_CHECKING``):

* ``core``: fedhet/core imports no Flower and nothing of fedhet outside fedhet/core;
* ``client->server``: client code (fedhet/client, fedhet/methods/*/client.py) imports no
  fedhet.server module and no method's strategy.py;
* ``server->client``: server code (fedhet/server, fedhet/methods/*/strategy.py) imports no
  fedhet.client module and no method's client.py;
* ``method->method``: no method folder imports another method's folder;
* ``config->methods``: fedhet/config.py imports nothing from fedhet.methods;
* ``cycle``: no import circle among fedhet modules (imports run at import time only: module level,
  not under ``TYPE_CHECKING``; importing ``a.b.c`` also runs ``a`` and ``a.b``);
* ``size``: no .py file in fedhet/ over :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "fedhet"
MAX_LINES = 600

Violation = tuple[str, str, str]  # (rule, importing module, imported module or "")

#: Violations that exist on this branch but belong to work done in parallel (other helpers'
#: files). The coordinator empties this list when merging; an entry that no longer occurs fails
#: the test too, so the list cannot go stale.
KNOWN_VIOLATIONS: set[Violation] = set()


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to a dotted module name."""

    target: str
    line: int
    runtime: bool  # runs when the importing module is imported (module level, not TYPE_CHECKING)


def module_name(path: Path, root: Path) -> str:
    """``fedhet/methods/__init__.py`` → ``fedhet.methods``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def parse_imports(source: str, module: str, is_package: bool, modules: set[str]) -> list[Import]:
    """Every import of ``source`` (function-level ones included), resolved against ``modules``."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, runtime: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), runtime)
            elif isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, runtime) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append(Import(sub if sub in modules else base, child.lineno, runtime))
            else:
                visit(child, runtime)

    visit(ast.parse(source), True)
    return found


def scan(root: Path = ROOT) -> tuple[dict[str, list[Import]], dict[str, int]]:
    """Imports and line counts of every module of the ``fedhet`` package under ``root``."""
    paths = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    modules = set(paths)
    imports: dict[str, list[Import]] = {}
    lines: dict[str, int] = {}
    for name, path in paths.items():
        text = path.read_text(encoding="utf-8")
        imports[name] = parse_imports(text, name, path.name == "__init__.py", modules)
        lines[name] = len(text.splitlines())
    return imports, lines


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _method_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[0] == PACKAGE and parts[1] == "methods":
        return parts[2]
    return None


def _is_client(module: str) -> bool:
    return _within(module, "fedhet.client") or (
        _method_of(module) is not None and module.endswith(".client")
    )


def _is_server(module: str) -> bool:
    return _within(module, "fedhet.server") or (
        _method_of(module) is not None and module.endswith(".strategy")
    )


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def violations(imports: Mapping[str, Iterable[Import]], lines: Mapping[str, int]) -> set[Violation]:
    """Every rule broken by the graph ``imports`` (module → its imports) and ``lines``."""
    found: set[Violation] = set()
    modules = set(imports)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, imps in imports.items():
        for imp in imps:
            target = imp.target
            outside_core = _within(target, "flwr") or (
                _within(target, PACKAGE) and not _within(target, "fedhet.core")
            )
            if _within(module, "fedhet.core") and outside_core:
                found.add(("core", module, target))
            if _is_client(module) and _is_server(target):
                found.add(("client->server", module, target))
            if _is_server(module) and _is_client(target):
                found.add(("server->client", module, target))
            own, other = _method_of(module), _method_of(target)
            if own and other and own != other:
                found.add(("method->method", module, target))
            if module == "fedhet.config" and _within(target, "fedhet.methods"):
                found.add(("config->methods", module, target))
            if imp.runtime and _within(target, PACKAGE):
                for dep in (*_ancestors(target), target):
                    if dep in modules and dep != module and dep not in _ancestors(module):
                        edges[module].add(dep)
    for comp in _cycles(edges):
        found.add(("cycle", comp[0], " -> ".join(comp)))
    for module, count in lines.items():
        if count > MAX_LINES:
            found.add(("size", module, ""))
    return found


def test_layer_rules_hold():
    imports, lines = scan()
    found = violations(imports, lines)
    new = sorted(found - KNOWN_VIOLATIONS)
    stale = sorted(KNOWN_VIOLATIONS - found)
    assert not new, "layer rules broken (tests/unit/test_structure.py):\n" + "\n".join(
        f"  {rule}: {mod} imports {target}" if rule != "size" else f"  {rule}: {mod}"
        for rule, mod, target in new
    )
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {stale}"


def test_scan_sees_function_level_relative_and_type_checking_imports():
    modules = {"fedhet", "fedhet.a", "fedhet.a.b", "fedhet.c"}
    src = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "if TYPE_CHECKING:\n"
        "    import fedhet.c\n"
        "def f():\n"
        "    from fedhet.c import thing\n"
    )
    imps = parse_imports(src, "fedhet.a", True, modules)
    assert Import("fedhet.a.b", 2, True) in imps
    assert Import("fedhet.c", 4, False) in imps
    assert Import("fedhet.c", 6, False) in imps


def test_checker_reports_every_rule_on_a_fake_graph():
    """The checker is not vacuous: a graph breaking each rule once yields each violation."""

    def imp(target: str, runtime: bool = True) -> Import:
        return Import(target, 1, runtime)

    graph = {
        "fedhet.core.x": [imp("flwr.app"), imp("fedhet.server.y", runtime=False)],
        "fedhet.methods.m.client": [imp("fedhet.methods.m.strategy")],
        "fedhet.methods.m.strategy": [imp("fedhet.client.runtime")],
        "fedhet.methods.m.wire": [imp("fedhet.methods.n.wire")],
        "fedhet.methods.n.wire": [],
        "fedhet.client.runtime": [],
        "fedhet.server.y": [imp("fedhet.config")],
        "fedhet.config": [imp("fedhet.methods", runtime=False), imp("fedhet.server.y")],
        "fedhet.methods": [],
        "fedhet.big": [],
        "fedhet.ok": [imp("fedhet.config", runtime=False)],
    }
    found = violations(graph, {"fedhet.big": MAX_LINES + 1, "fedhet.ok": MAX_LINES})
    assert found == {
        ("core", "fedhet.core.x", "flwr.app"),
        ("core", "fedhet.core.x", "fedhet.server.y"),
        ("client->server", "fedhet.methods.m.client", "fedhet.methods.m.strategy"),
        ("server->client", "fedhet.methods.m.strategy", "fedhet.client.runtime"),
        ("method->method", "fedhet.methods.m.wire", "fedhet.methods.n.wire"),
        ("config->methods", "fedhet.config", "fedhet.methods"),
        ("cycle", "fedhet.config", "fedhet.config -> fedhet.server.y"),
        ("size", "fedhet.big", ""),
    }


def test_a_package_init_importing_its_submodules_is_not_a_cycle():
    graph = {
        "fedhet.data": [Import("fedhet.data.catalog", 1, True)],
        "fedhet.data.catalog": [],
        "fedhet.config": [Import("fedhet.data.catalog", 1, True)],
        "fedhet.data.user": [Import("fedhet.config", 1, True)],
    }
    assert violations(graph, {}) == set()
    # ...but an eager package init that imports a module depending back on it is one
    graph["fedhet.data"].append(Import("fedhet.data.user", 2, True))
    assert ("cycle", "fedhet.config", "fedhet.config -> fedhet.data -> fedhet.data.user") in (
        violations(graph, {})
    )
