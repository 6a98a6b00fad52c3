"""Dependencies inside gpt2lab point one way: no module imports, at the top or inside a function, a module that
imports it back (directly or through others).

The graph is read from the source with `ast`, so lazy imports count as much as top-level ones. An import of
`gpt2lab.pkg.mod` from outside `pkg` also runs `gpt2lab/pkg/__init__.py` first, so it is an edge to the package
too; from inside `pkg` it is not (the package is already being imported), nor is the root package `gpt2lab`.
"""

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "gpt2lab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(name: str, modules: dict) -> str:
    """The package a module lives in (a package's own __init__ lives in the package itself)."""
    return name if modules[name].name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(node: ast.AST, importer: str, modules: dict) -> set[str]:
    """The gpt2lab modules one import statement makes Python execute."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from .x import y
            anchor = package_of(importer, modules).split(".")
            base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
        # `from a import b` imports module a.b when b is one, else takes the name b from module a
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:  # `import gpt2lab.x.y` names a module, not an attribute
            target = target.rpartition(".")[0]
        if not target:
            continue
        found.add(target)
        # the packages between the root and the target run first, unless the importer is already inside them
        parts = target.split(".")
        for depth in range(2, len(parts)):
            package = ".".join(parts[:depth])
            if not (importer == package or importer.startswith(package + ".")):
                found.add(package)
    found.discard(importer)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = set()
        for node in ast.walk(tree):  # every statement, function bodies included
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name] |= imported_modules(node, name, modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state = {}  # module -> "visiting" | "done"

    def visit(node, path):
        state[node] = "visiting"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "visiting":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_graph_sees_lazy_imports_and_package_inits():
    graph = import_graph()
    assert "gpt2lab.runtime.device" in graph["gpt2lab.train.trainer"]  # top level
    assert "gpt2lab.eval.hellaswag" in graph["gpt2lab.train.trainer"]  # inside a method
    assert "gpt2lab.eval" in graph["gpt2lab.train.trainer"]  # the package __init__ runs first
    assert "gpt2lab.train" not in graph["gpt2lab.train.trainer"]  # its own package: already importing


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_gpt2lab():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
