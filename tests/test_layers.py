"""The layers of `worker/`, read from its import graph (no import runs): the
domain stays pure, the engine knows no role or tool, only the roles' host
imports the roles, no two modules import each other even through others,
and no module grows past 400 lines nor any function past 40. Function-level
imports count."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "worker"
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    """One import statement's target, as written and as a module of ours."""

    importer: str
    target: str  # dotted name imported (a module, a package or a name's module)
    module: str | None  # the module of `worker/` it loads, if any
    line: int

    def where(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.target}"


def module_name(path: Path) -> str:
    return module_name_under(REPO, path)


def module_name_under(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def _base(importer: str, path: Path, node: ast.ImportFrom) -> str:
    """The package a `from ... import` starts from, relative ones resolved."""
    if not node.level:
        return node.module or ""
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _ours(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours a dotted name loads: itself, or the nearest
    enclosing package or module (`worker.x.Name` loads `worker.x`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(importer: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import anywhere in the module. `from pkg import name` is an
    edge to `pkg.name` when that is a module, else to the package itself."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(importer, alias.name, _ours(alias.name, modules), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _base(importer, path, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in modules else base
                found.append(Import(importer, target, _ours(target, modules), node.lineno))
    return found


def all_imports(modules: dict[str, Path]) -> list[Import]:
    return [i for name, path in modules.items() for i in imports_of(name, path, modules)]


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def role_imports_outside_roles(imports: list[Import]) -> list[str]:
    """(a) Only the roles, the runtime that hosts them and the entry point
    may import a role."""
    hosts = ("worker.roles", "worker.runtime", "worker.__main__")
    return [
        i.where()
        for i in imports
        if under(i.target, "worker.roles") and not under(i.importer, *hosts)
    ]


DOMAIN_FORBIDDEN = (
    "worker.adapters",
    "worker.engine",
    "worker.roles",
    "worker.replay",
    "worker.tools",
    "aiohttp",
    "aiokafka",
    "asyncpg",
)
ENGINE_FORBIDDEN = ("worker.roles", "worker.replay", "worker.tools")


def forbidden_imports(imports: list[Import], layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [i.where() for i in imports if under(i.importer, layer) and under(i.target, *forbidden)]


def graph(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for i in imports:
        edges.setdefault(i.importer, set())
        if i.module is not None and i.module != i.importer:
            edges[i.importer].add(i.module)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module
    (Tarjan), as a chain that starts and ends with the same module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_chain(edges, component) for component in components]


def _chain(edges: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest way from the component's first module back to itself."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, set()) & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def import_cycles(imports: list[Import]) -> list[str]:
    """(d) Cycles, each as `a -> b -> a`."""
    return [" -> ".join(chain) for chain in cycles(graph(imports))]


def long_modules(modules: dict[str, Path]) -> list[str]:
    """(e) Modules over MAX_LINES lines."""
    found = []
    for name, path in modules.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            found.append(f"{name}: {lines} lines (at most {MAX_LINES})")
    return found


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return read_modules()


@pytest.fixture(scope="module")
def imports(modules: dict[str, Path]) -> list[Import]:
    return all_imports(modules)


def test_the_graph_is_read_whole(modules: dict[str, Path], imports: list[Import]) -> None:
    """A sanity floor: the walk sees the whole package and nested imports."""
    assert "worker.__main__" in modules
    assert "worker.domain" in modules
    lazy = [i.target for i in imports if i.importer == "worker.__main__"]
    assert "worker.runtime" in lazy, lazy


def test_relative_and_nested_imports_are_resolved(tmp_path: Path) -> None:
    root = tmp_path / "worker"
    (root / "pkg").mkdir(parents=True)
    for name in ("__init__.py", "pkg/__init__.py", "pkg/b.py", "c.py"):
        (root / name).write_text("")
    (root / "pkg" / "a.py").write_text(
        "from . import b\nfrom .b import thing\nfrom .. import c\n"
        "def later():\n    from ..pkg import b, helper\n"
    )
    modules = {module_name_under(tmp_path, p): p for p in sorted(root.rglob("*.py"))}
    found = imports_of("worker.pkg.a", root / "pkg" / "a.py", modules)
    assert [(i.target, i.module) for i in found] == [
        ("worker.pkg.b", "worker.pkg.b"),
        ("worker.pkg.b", "worker.pkg.b"),
        ("worker.c", "worker.c"),
        ("worker.pkg.b", "worker.pkg.b"),
        ("worker.pkg", "worker.pkg"),
    ]


def test_only_the_roles_host_imports_the_roles(imports: list[Import]) -> None:
    found = role_imports_outside_roles(imports)
    assert not found, "a role imported outside roles/, runtime and __main__:\n" + "\n".join(found)


def test_the_domain_imports_no_io_and_no_outer_layer(imports: list[Import]) -> None:
    found = forbidden_imports(imports, "worker.domain", DOMAIN_FORBIDDEN)
    assert not found, "worker/domain must stay pure:\n" + "\n".join(found)


def test_the_engine_imports_no_role_replay_or_tool(imports: list[Import]) -> None:
    found = forbidden_imports(imports, "worker.engine", ENGINE_FORBIDDEN)
    assert not found, "worker/engine reaches an outer layer:\n" + "\n".join(found)


def test_no_import_cycle(imports: list[Import]) -> None:
    found = import_cycles(imports)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_module_over_400_lines(modules: dict[str, Path]) -> None:
    found = long_modules(modules)
    assert not found, "modules too long:\n" + "\n".join(found)


def readme_layout() -> set[str]:
    """The modules the README's code layout names, as paths under worker/."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("Code layout (`worker/`)") :]
    block = section[section.index("```\n") + 4 : section.index("\n```", section.index("```\n"))]
    named, folder = set(), ""
    for line in block.splitlines():
        entry = line.split()[0]
        if not line.startswith(" "):
            folder = entry if entry.endswith("/") else ""
            if not folder:
                named.add(entry)
        else:
            named.add(folder + entry)
    return named


def _only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def test_readme_layout_names_every_module() -> None:
    """A package's __init__ that only describes the package needs no line."""
    files = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or not _only_a_docstring(p)
    }
    named = readme_layout()
    assert sorted(files - named) == [], "modules missing from the README's code layout"
    assert sorted(named - files) == [], "the README's code layout names modules that do not exist"


MAX_FUNCTION_LINES = 40


def test_no_function_over_40_lines(modules: dict[str, Path]) -> None:
    """A handler reads load, decide, record; anything longer is split into
    named steps."""
    found = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, path in modules.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not found, "functions too long:\n" + "\n".join(found)
