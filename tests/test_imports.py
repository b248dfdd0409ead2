"""The package's import graph has no circle, counting imports inside functions too (a lazy import that closes a
circle hides a layering mistake until the day someone moves it to the top)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mechbench"


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("mechbench",) + path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechbench"):
                # "from mechbench.zoo import data" imports mechbench.zoo and mechbench.zoo.data
                for target in [node.module] + [f"{node.module}.{a.name}" for a in node.names]:
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_of_mechbench_imports_itself_through_others():
    graph = _graph()
    assert "mechbench.intervene.engine" in graph and graph["mechbench.methods.path_patching"]  # the graph is read
    assert _circles(graph) == []


def test_the_models_layer_imports_no_method():
    """Model specs name their circuit's discovery settings and knockout edges as data (models/discovery_settings.py,
    edge names as strings): the layer the methods load models from must not need the methods."""
    graph = _graph()
    models = [m for m in graph if m == "mechbench.models" or m.startswith("mechbench.models.")]
    assert "mechbench.models.registry" in models
    assert {(m, t) for m in models for t in graph[m] if t.startswith("mechbench.methods")} == set()


def test_a_circle_is_found():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
