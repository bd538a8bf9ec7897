"""Planning imports neither torch, transformers nor deepspeed, not even indirectly (STYLE.md: the
planner is pure Python; `python -X importtime -m ftplan plan ...` must not show them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "deepspeed", "peft", "accelerate", "bitsandbytes")


def imported_modules(*args: str) -> set[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftplan", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = set()
    for line in done.stderr.splitlines():
        # "import time:   self [us] |  cumulative | imported package"
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                modules.add(name)
    assert "planner.memory" in modules  # the parse worked
    return modules


@pytest.mark.parametrize("command", [
    ("plan", "--model", "7b", "--gpus", "8xA800"),
    ("estimate", "--model", "7b", "--gpus", "8xA800", "--method", "full", "--zero", "3"),
], ids=["plan", "estimate"])
def test_no_heavy_imports(command: tuple[str, ...]) -> None:
    heavy = sorted(m for m in imported_modules(*command) if m.split(".")[0] in HEAVY)
    assert not heavy, f"planning imported {heavy[:10]}"


# --- package arrows, read from the source (function-level imports included) -------------------------

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ftplan", "planner", "profiler", "runner", "reports")
# STYLE.md: ftplan -> everything; runner -> profiler, planner; profiler -> planner; reports -> planner
ALLOWED: dict[str, set[str]] = {
    "ftplan": set(PACKAGES),
    "runner": {"runner", "profiler", "planner"},
    "profiler": {"profiler", "planner"},
    "reports": {"reports", "planner"},
    "planner": {"planner"},
}
# the planner is pure Python: not even a function may import these
PLANNER_FORBIDDEN = (*HEAVY, "optuna", "rich", "typer", "matplotlib", "yaml")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append((node.lineno, path.relative_to(REPO).parts[0]))  # a relative import stays in its package
    return out


def package_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_package_arrows_point_one_way() -> None:
    wrong = []
    for path in package_modules():
        pkg = path.relative_to(REPO).parts[0]
        for line, module in imports_of(path):
            top = module.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[pkg]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert len(package_modules()) > 50  # the walk found the packages
    assert not wrong, "imports against the package arrows:\n" + "\n".join(wrong)


def test_planner_imports_nothing_heavy_even_in_functions() -> None:
    wrong = [f"{path.relative_to(REPO)}:{line} imports {module}"
             for path in sorted((REPO / "planner").rglob("*.py"))
             for line, module in imports_of(path) if module.split(".")[0] in PLANNER_FORBIDDEN]
    assert not wrong, "\n".join(wrong)


# --- no import cycles: the module graph of every import statement (in functions and under TYPE_CHECKING too) ---

def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in package_modules()}

    def known(name: str) -> str | None:  # `from planner.engines import ddp` names the module planner.engines.ddp
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in map(known, targets) if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert {"ftplan.cli", "planner.strategy", "runner.train"} <= set(graph)
    assert not cycles(graph), "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles(graph))
