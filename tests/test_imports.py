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
        tree = ast.parse(path.read_text())
        # imports for type checkers only (``if TYPE_CHECKING:``) never run: they close no circle
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(block)
        }
        for node in (n for n in ast.walk(tree) if id(n) not in typing_only):
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
    assert "mechbench.intervene.api" in graph and graph["mechbench.methods.path_patching"]  # the graph is read
    assert _circles(graph) == []


def test_the_models_layer_imports_no_method():
    """Model specs name their circuit's discovery settings and knockout edges as data (models/discovery_settings.py,
    edge names as strings): the layer the methods load models from must not need the methods."""
    graph = _graph()
    models = [m for m in graph if m == "mechbench.models" or m.startswith("mechbench.models.")]
    assert "mechbench.models.registry" in models
    assert {(m, t) for m in models for t in graph[m] if t.startswith("mechbench.methods")} == set()


def test_the_models_layer_imports_nothing_of_the_engine():
    """A model's sites, geometry, LoRA module names and decoder-layer call are model facts
    (mechbench/models/architectures.py): the engine reads them from the models layer, never the reverse."""
    graph = _graph()
    models = [m for m in graph if m == "mechbench.models" or m.startswith("mechbench.models.")]
    assert "mechbench.models.architectures" in models and "mechbench.intervene" in graph
    assert {(m, t) for m in models for t in graph[m] if t.split(".")[:2] == ["mechbench", "intervene"]} == set()


def _imported_names(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from mechbench.intervene... import name`` in ``path``, and (module, "") of every
    plain ``import mechbench.intervene...`` (refused: what it reads through the module is not checked)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechbench.intervene"):
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.startswith("mechbench.intervene")]
    return out


def test_the_methods_use_only_the_engines_public_names():
    """Methods state what they want through mechbench.intervene's public API (its __all__), never a submodule's
    internals: the engine's machinery can change under them."""
    import mechbench.intervene

    public = set(mechbench.intervene.__all__)
    methods = sorted((PACKAGE / "methods").glob("*.py"))
    used = [(path.name, module, name) for path in methods for module, name in _imported_names(path)]
    assert used  # the scan reads the imports
    assert [u for u in used if u[1] != "mechbench.intervene" or u[2] not in public] == []


def test_a_circle_is_found():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
