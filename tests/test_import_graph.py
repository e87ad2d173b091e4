"""The package's import graph (every import statement of every module, function-level ones included) has no
circles: a module never needs, directly or through others, a module that needs it; and no layer imports one above
it (`LAYERS`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlpkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the vlpkit modules it imports (a package stands for its __init__.py)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import vlpkit.x.y` of a name inside a module
                    target = target.rpartition(".")[0]
                if target.startswith("vlpkit") and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_is_read_from_the_code():
    graph = import_graph()
    assert "vlpkit.models.e2evlp" in graph["vlpkit.builder"]  # a module-level import
    assert "vlpkit.checkpoint" in graph["vlpkit.models.e2evlp"]  # a function-level one
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


# package -> the packages it must not import (directly): the layers from the shared vocabulary up to the jobs
LAYERS = {
    "vlpkit.outputs": ("vlpkit.",),  # the typed outputs every layer shares import no other vlpkit module
    "vlpkit.generation": ("vlpkit.models", "vlpkit.tasks", "vlpkit.pretraining", "vlpkit.engine",
                          "vlpkit.inference"),
    "vlpkit.models": ("vlpkit.tasks", "vlpkit.pretraining", "vlpkit.inference", "vlpkit.cli", "vlpkit.demo"),
    "vlpkit.tasks": ("vlpkit.pretraining", "vlpkit.cli", "vlpkit.demo"),
}


def test_no_import_reaches_up_a_layer():
    graph = import_graph()
    wrong = [f"{module} imports {target}" for module, targets in graph.items() for target in sorted(targets)
             for layer, forbidden in LAYERS.items()
             if (module == layer or module.startswith(layer + ".")) and target.startswith(forbidden)
             and not (target == layer or target.startswith(layer + "."))]
    assert not wrong, "\n".join(wrong)
    assert "vlpkit.generation" in graph["vlpkit.models.e2evlp"]  # the model's generate: a downward import
