"""The shape of the house (../STYLE.md "Data flows one way"), checked on the import graph.

Module-level imports only: a deferred import inside a function (config's validation reaching the
component tables, say) is how a room asks a lower one a question without a cycle.
"""

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESEARCH = ROOT / "research"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports() -> dict[str, set[str]]:
    """research module -> the research modules it imports at module level."""
    modules = {module_name(p): p for p in RESEARCH.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text()).body:  # Module level only.
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_module_in_research_imports_in_a_cycle():
    graph = top_level_imports()
    # A package's __init__ re-exporting its submodules is not a dependency of those submodules.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    list(graphlib.TopologicalSorter(graph).static_order())  # Raises CycleError on a cycle.


def test_rooms_import_downward_only():
    graph = top_level_imports()
    assert graph["research.errors"] == set()  # Everyone may raise; errors import nothing of ours.
    below_config = [m for m in graph if m not in ("research.config",) and "sweeps" not in m]
    for module in below_config:  # Nothing below config imports config.
        assert "research.config" not in reaches(graph, module), module
    models = [m for m in graph if m.startswith("research.models")]
    data = [m for m in graph if m.startswith("research.data")]
    for module in models:  # Models never import data; data never imports models.
        assert not any(d.startswith("research.data") for d in reaches(graph, module)), module
    for module in data:
        assert not any(d.startswith("research.models") for d in reaches(graph, module)), module
    for module in [m for m in graph if m.startswith("research.tasks")]:  # Tasks know losses,
        assert not reaches(graph, module) & {  # not training.
            "research.train",
            "research.steps",
            "research.optim",
            "research.checkpoint",
            "research.parallel",
        }, module
