"""The walls between packages: what each one exports, whom it may import, how big a module is.

Each stage of the flow is one package under ``src/modelyard``; its private
modules (``_name.py``) are its own, and what others may use is listed in its
``__init__.py`` ``__all__``. These tests read the source with ``ast`` (no
import needed, except for the exported surface) and fail with the offending
file and line. docs/architecture.md, which describes these walls, is held to
the code too: every module, path and ``Store`` method it names exists, and its
layout lists every package.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import modelyard

SRC = Path(modelyard.__file__).parent
MAX_LINES = 600


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. modelyard.store._core
    target: str  # the imported module, e.g. modelyard.store._audit
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


MODULES = _modules()


def _package_of(module: str) -> str:
    """The package a module belongs to: itself for a package, else its parent."""
    if MODULES[module].name == "__init__.py":
        return module
    return module.rsplit(".", 1)[0]


def _imports(module: str) -> Iterator[Import]:
    """Every import of a ``modelyard`` module, at any depth (lazy imports count too)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "modelyard":
                    yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "modelyard":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from pkg import submodule` imports the submodule, not just the package
                yield Import(module, sub if sub in MODULES else base, node.lineno)


ALL_IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[1:])


def _owner(private_module: str) -> str:
    """The package whose private module this is (the part before the first ``_name``)."""
    parts = private_module.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_"):
            return ".".join(parts[:i])
    raise AssertionError(private_module)


def test_no_module_imports_another_packages_private_module() -> None:
    offences = []
    for imp in ALL_IMPORTS:
        if not _is_private(imp.target):
            continue
        owner = _owner(imp.target)
        source_package = _package_of(imp.source)
        if source_package == owner or source_package.startswith(owner + "."):
            continue
        path = MODULES[imp.source].relative_to(SRC.parent)
        offences.append(f"{path}:{imp.line} imports {imp.target} (private to {owner})")
    assert not offences, "import the package's public name instead:\n" + "\n".join(offences)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if imp.target in MODULES and imp.target != imp.source:
            edges.setdefault(imp.source, set()).add(imp.target)
    cycles = _cycles(edges)
    assert not cycles, "modules that import each other (directly or around a circle):\n" + (
        "\n".join(" <-> ".join(c) for c in cycles)
    )


def test_the_cycle_finder_finds_a_circle() -> None:
    """The check above can fail: a circle of three is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}}) == []


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_every_module_stays_under_the_size_limit(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, (
        f"{MODULES[module].relative_to(SRC.parent)} has {lines} lines (limit {MAX_LINES}): "
        "split it along its responsibilities"
    )


PACKAGES = sorted(
    name
    for name, path in MODULES.items()
    if path.name == "__init__.py" and ".migrations" not in name
)


def _submodules(package: types.ModuleType) -> set[str]:
    return {info.name for info in pkgutil.iter_modules(package.__path__)}


@pytest.mark.parametrize("name", PACKAGES, ids=str)
def test_each_package_exports_what_it_binds_and_nothing_else(name: str) -> None:
    """Like HTTPX's test_exported_members: ``__all__`` is exactly the public names the package
    binds (no forgotten export, no name listed that is not there), sorted, each once."""
    package = importlib.import_module(name)
    exported = getattr(package, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(package, n)]
    assert not missing, f"{name}.__all__ lists names it does not bind: {missing}"
    if name == "modelyard":
        return  # the root binds its subpackages and __version__ only
    public = {
        n
        for n, value in vars(package).items()
        if not n.startswith("_")
        and n != "annotations"
        and n not in _submodules(package)
        and not isinstance(value, types.ModuleType)
    }
    assert public == set(exported), (
        f"{name}: bound but not exported {sorted(public - set(exported))}, "
        f"exported but not bound {sorted(set(exported) - public)}"
    )


# -- docs/architecture.md names only what exists -------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
_TICKED = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"[\w.*/-]+")
_DOTTED = re.compile(r"modelyard(\.\w+)+")


def _top_level_names(module: str) -> set[str]:
    """What a module binds at its top level: defs, classes, assignments and imports."""
    tree = ast.parse(MODULES[module].read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@functools.cache
def _store_methods() -> frozenset[str]:
    """Every method of a class in ``modelyard.store``: what ``Store`` may have."""
    return frozenset(
        item.name
        for name, path in MODULES.items()
        if name.startswith("modelyard.store.")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        for item in node.body
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
    )


def _unresolved(token: str, files: set[str], store_methods: frozenset[str]) -> str | None:
    """Why a backticked ``token`` names nothing that exists (None: it does, or it is no name)."""
    bare = re.sub(r"\(.*\)$", "", token)  # `Store.open(url, migrate=True)`
    if _DOTTED.fullmatch(bare):
        parts = bare.split(".")
        for i in range(len(parts), 1, -1):
            module = ".".join(parts[:i])
            if module in MODULES:
                rest = parts[i:]
                if rest and rest[0] not in _top_level_names(module):
                    return f"{module} binds no {rest[0]}"
                return None
        return "no such module"
    if bare.startswith("Store.") and bare.count(".") == 1:
        method = bare.split(".")[1]
        return None if method in store_methods else f"no Store method {method}"
    if not _PATH.fullmatch(token) or token.startswith("/") or re.match(r"[A-Z_]+[./]", token):
        return None  # not a path (an HTTP path, a placeholder such as OUTPUT.batch/)
    if "/" in token:
        path = token.rstrip("/")
        if any((base / path).exists() for base in (ROOT, SRC, SRC.parent)):
            return None
        return "no such file or directory"
    if token.endswith(".py") and token.startswith("_"):
        return None if token in files else "no module file of that name"
    return None


def test_architecture_doc_names_only_modules_and_paths_that_exist() -> None:
    """Every `src/...`-style path, `modelyard.x.y` module (and the name after it), `_x.py`
    file and `Store.method` that docs/architecture.md names exists in the code."""
    files = {path.name for path in MODULES.values()}
    store_methods = _store_methods()
    wrong = []
    for number, line in enumerate(ARCHITECTURE.read_text().splitlines(), start=1):
        for token in _TICKED.findall(line):
            why = _unresolved(token.strip(), files, store_methods)
            if why:
                wrong.append(f"docs/architecture.md:{number}: `{token}`: {why}")
    assert not wrong, "rename or remove these references:\n" + "\n".join(wrong)


def test_the_layout_lists_every_package_and_top_level_module() -> None:
    """The Layout block has a line for each package and each module of ``src/modelyard``."""
    text = ARCHITECTURE.read_text()
    layout = text[text.index("```\nsrc/modelyard/") :]
    layout = layout[: layout.index("\n```", 4)]
    named = {
        line.split()[0]
        for line in layout.splitlines()[1:]
        if line.startswith("  ") and line[2] != " "
    }
    expected = {p.name + "/" for p in SRC.iterdir() if (p / "__init__.py").exists()} | {
        p.name for p in SRC.glob("*.py") if p.name != "__init__.py"
    }
    missing = sorted(expected - named)
    assert not missing, f"docs/architecture.md's Layout does not list: {missing}"


def test_the_reference_check_finds_a_wrong_name() -> None:
    """The checks above can fail: a moved module, a missing name and a missing path are found."""
    files = {path.name for path in MODULES.values()}
    methods = _store_methods()
    assert _unresolved("modelyard.store._nowhere", files, methods)
    assert _unresolved("modelyard.data.no_such_function", files, methods)
    assert _unresolved("serving/_no_such_module.py", files, methods)
    assert _unresolved("_no_such_module.py", files, methods)
    assert _unresolved("Store.no_such_method", files, methods)
    assert _unresolved("modelyard.data.load_rows", files, methods) is None
    assert _unresolved("store/_core.py", files, methods) is None
    assert _unresolved("Store.set_alias", files, methods) is None
