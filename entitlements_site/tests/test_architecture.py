"""The layering of docs/architecture.md, read from the code's own imports (ast), so that it
stays true: each package imports only the layers below it, the kernel no domain app, and no
module imports itself back through others (no cycle, counting imports inside functions).

    core  <-  catalog  <-  customers  <-  billing  <-  pages (dashboard, support)  <-  site

Tests are left out (a test may use any factory); migrations are not.
"""

import ast
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
LAYERS = [
    {"core"},
    {"catalog"},
    {"customers"},
    {"billing"},
    {"dashboard", "support"},
    {"entitlements_site"},
]
LAYER_OF = {package: n for n, layer in enumerate(LAYERS) for package in layer}
# The modules written as files, by dotted name.
MODULES = {
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
    for package in LAYER_OF
    for path in (ROOT / package).rglob("*.py")
    if "tests" not in path.relative_to(ROOT).parts
}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str) -> set[str]:
    """The project modules `module` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            # `from pkg import name`: the submodule pkg.name where there is one.
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]  # `import a.b.c` of a name inside a.b
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_the_modules_are_found():
    assert {"core.outbox", "customers.engine.arithmetic", "billing.models"} <= set(MODULES)
    assert "core.errors" in GRAPH["customers.engine.consume"]


def test_no_package_imports_a_layer_above_it():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if LAYER_OF[target.split(".")[0]] > LAYER_OF[module.split(".")[0]]
    )
    assert upward == []


def test_the_pages_do_not_import_each_other():
    across = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if {module.split(".")[0], target.split(".")[0]} == {"dashboard", "support"}
    )
    assert across == []


def test_the_kernel_imports_no_domain_app():
    assert (
        sorted(
            f"{m} imports {t}"
            for m, ts in GRAPH.items()
            if m.startswith("core.") or m == "core"
            for t in ts
            if not t.startswith("core")
        )
        == []
    )


def test_no_import_cycle():
    """Depth-first search for a module reached again from itself."""
    cycles, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            cycles.append(" -> ".join([*path[path.index(module) :], module]))
            return
        if module in done:
            return
        path.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
    assert cycles == []


def test_the_engine_arithmetic_is_pure():
    assert GRAPH["customers.engine.arithmetic"] == set()
