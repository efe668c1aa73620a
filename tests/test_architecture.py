"""The package's shape: imports point one way (entry points -> pipeline -> building blocks), with no
cycle, not even one held apart by an import inside a function."""
import ast
from pathlib import Path

from src.config import PROJECT_ROOT

SRC = PROJECT_ROOT / "src"
ENTRY_POINTS = {"src.train", "src.evaluate", "src.export"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def src_imports() -> dict[str, set[str]]:
    """Each src module's imports of other src modules, wherever in the file they stand."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("src")}
        graph[name] = {t for t in targets if t in modules and t != name and t != "src"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_src_has_no_import_cycle():
    graph = src_imports()
    assert len(graph) > 20  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_imports_an_entry_point():
    graph = src_imports()
    offenders = {name: sorted(targets & ENTRY_POINTS) for name, targets in graph.items() if targets & ENTRY_POINTS}
    assert offenders == {}


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
