"""The package's layers: every module imports only from its own layer or the layers before it, and no import chain
comes back to where it started. Every import counts, those inside functions too, and importing a submodule counts as
importing each package above it (Python runs their ``__init__`` first)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unetzoo"

# lowest first; a module belongs to the first entry that is its name or a package above it
LAYERS = [
    [
        "unetzoo.errors",
        "unetzoo.formatting",
        "unetzoo.io",
        "unetzoo.itk_io",
        "unetzoo.tiff_io",
        "unetzoo.runfolder",
        "unetzoo.device",
        "unetzoo.config",
    ],
    ["unetzoo.data"],
    ["unetzoo.models"],
    ["unetzoo.methods"],
    ["unetzoo.evaluation"],
    ["unetzoo.inference"],
    ["unetzoo.training"],
    ["unetzoo.experiments"],
    ["unetzoo.cli", "unetzoo"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    for rank, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names if n != "unetzoo") or module in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def with_packages(module: str) -> list[str]:
    """The module and every package above it (but the root package): what importing it runs."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1)]


def imports(module: str) -> set[str]:
    """The unetzoo modules ``module`` imports anywhere in its file."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: a relative import; the walk reads absolute ones only")
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from unetzoo.data import transforms`` imports the module unetzoo.data.transforms
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        else:
            continue
        for name in names:
            if name.startswith("unetzoo."):
                found.update(m for m in with_packages(name) if m in MODULES)
    own = set(with_packages(module)) if module != "unetzoo" else set()
    return found - own - {module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    upward = sorted(f"{module} -> {target}" for target in GRAPH[module] if layer(target) > layer(module))
    assert not upward, "upward imports: " + ", ".join(upward)


def test_no_import_cycles():
    """Tarjan's strongly connected components: any component of more than one module is a cycle."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles among: " + "; ".join(", ".join(c) for c in cycles)


def test_the_graph_sees_imports_inside_functions():
    """The walk is not blind to a function-level import (the kind that hid the old cycles)."""
    assert "unetzoo.inference.predictor" in GRAPH["unetzoo.training.run"] | GRAPH["unetzoo.training.validation"]
