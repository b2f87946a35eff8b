"""The package's house rules, read from its source: the module import graph of src/hbfast has no cycle,
and no module imports (or reaches through an attribute) another hbfast module's ``_``-private names."""
import ast
import functools
import importlib.util
from pathlib import Path

import hbfast

PACKAGE = Path(hbfast.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ("hbfast",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


@functools.lru_cache(maxsize=None)
def _is_extension(name: str) -> bool:
    """A compiled module of the package (hbfast.ops._C): a module, though no .py file holds it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and not spec.origin.endswith(".py")


def _absolute(module: str, is_package: bool, level: int, name) -> str:
    """The absolute module of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(modules: dict) -> dict:
    """{module: [(imported module, [names imported from it], line)]}, hbfast modules only.
    ``from .pkg import mod`` counts as an import of ``pkg.mod`` when that is a module."""
    out = {}
    for module, tree in modules.items():
        is_package = (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").is_file() or module == "hbfast"
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "hbfast"]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, is_package, node.level, node.module)
                if source.split(".")[0] != "hbfast":
                    continue
                names = [a.name for a in node.names]
                submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in modules]
                plain = [n for n in names if f"{source}.{n}" not in modules and not _is_extension(f"{source}.{n}")]
                if plain or not submodules:
                    edges.append((source, plain, node.lineno))
                edges += [(m, [], node.lineno) for m in submodules]
        out[module] = [e for e in edges if e[0] in modules and e[0] != module]
    return out


def _cycles(graph: dict) -> list:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_cycle_finder_finds_cycles():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_module_graph_is_acyclic():
    """Module-level and function-level imports alike; a package importing its own submodules (its
    ``__init__`` re-exporting them) is the package's API, not a cycle, and is left out."""
    imports = _imports(_sources())
    graph = {m: sorted({t for t, _, _ in edges if not _is_ancestor(m, t) and not _is_ancestor(t, m)})
             for m, edges in imports.items()}
    assert _cycles(graph) == []


def _private_uses(modules: dict) -> list:
    """(module, line, what) for each ``from hbfast.x import _y`` and ``x._y`` attribute access of another
    hbfast module ``x`` imported by name; names of the module's own package's __init__ are its own."""
    found = []
    imports = _imports(modules)
    for module, tree in modules.items():
        for source, names, line in imports[module]:
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    found.append((module, line, f"from {source} import {n}"))
        aliases = {}  # local name -> hbfast module, from "import hbfast.x as y" and "from . import x"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                is_package = (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").is_file() or module == "hbfast"
                source = _absolute(module, is_package, node.level, node.module)
                for a in node.names:
                    if f"{source}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{source}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in modules and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != module):
                found.append((module, node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return found


def test_private_finder_finds_private_uses():
    tree = ast.parse("from .a import _b, c\nfrom . import a\nx = a._d\nfrom .a import __version__\n")
    uses = _private_uses({"hbfast.a": ast.parse(""), "hbfast.m": tree})
    assert uses == [("hbfast.m", 1, "from hbfast.a import _b"), ("hbfast.m", 3, "hbfast.a._d")]


def test_no_private_names_across_modules():
    uses = _private_uses(_sources())
    assert uses == [], "\n".join(f"{m}:{line}: {what}" for m, line, what in uses)
