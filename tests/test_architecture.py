"""The floor plan of docs/architecture.md, checked: layers, no cycles, no private reaches, sizes.

Read from the source with ``ast`` (every import counts, also one inside a function: a lazy
import still ties two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shmbench"

#: folder (or top-level module) -> what it may import besides itself and ``errors``
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_ring": set(),
    "wire": {"_ring"},
    "transport": {"_ring"},
    "agents": {"wire"},
    "benchmarks": {"wire", "agents"},
    "server": {"transport", "wire", "benchmarks"},
    "logs": set(),
    "images": {"wire"},
    "runtimes": {"transport", "images"},
    "host": {"wire", "transport", "runtimes"},
    "experiments": {"wire", "benchmarks", "agents", "host", "images", "runtimes", "logs"},
    "sweeps": {"experiments", "images", "logs", "transport", "agents"},
    "perf": set(),
    "cli": {"*"},
    "container": set(),
    "__init__": set(),
    "__main__": {"cli"},
}
#: the one import across the layers, and why: the builder drives the Apptainer the runtime finds
EXCEPTIONS = {("shmbench.images.build", "shmbench.runtimes.apptainer")}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str]]:
    """(imported module, imported name or '') for every shmbench import in a module."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "shmbench"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.split(".")[0] != "shmbench":
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                out.append((full, "") if full in MODULES else (module, alias.name))
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_every_import_stays_within_the_layers():
    wrong = []
    for name in MODULES:
        unit = _unit(name)
        allowed = ALLOWED[unit]
        for module, imported in _imports(name):
            target = _unit(module)
            if target == "__init__" and imported in ("__version__", "__file__", ""):
                continue  # the package itself: its version, its location
            if target in (unit, "errors") or "*" in allowed or target in allowed or (name, module) in EXCEPTIONS:
                continue
            wrong.append(f"{name} imports {module}{'.' + imported if imported else ''}")
    assert not wrong, "imports across the layers of docs/architecture.md:\n" + "\n".join(wrong)


def test_no_module_imports_another_modules_private_name():
    reaches = [
        f"{name}: from {module} import {imported}"
        for name in MODULES
        for module, imported in _imports(name)
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert not reaches, "\n".join(reaches)


def test_no_import_cycle():
    graph = {name: {m for m, _ in _imports(name) if m in MODULES and m != name} for name in MODULES}
    # a package's __init__ re-exporting its own submodules is not a cycle of concern
    for name in graph:
        graph[name] = {m for m in graph[name] if not (MODULES[m].name == "__init__.py" and name.startswith(m + "."))}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend([*stack[stack.index(nxt) :], nxt])
                return True
            if nxt not in state and visit(nxt, [*stack, nxt]):
                return True
        state[node] = 2
        return False

    for name in sorted(graph):
        if name not in state and visit(name, [name]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it by concept"


def test_every_folder_is_on_the_plan():
    assert {_unit(name) for name in MODULES} == set(ALLOWED)
