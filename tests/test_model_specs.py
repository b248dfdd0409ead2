"""One spec per model (mechbench/models/registry.py): every registered model's spec is complete and consistent with
the other specs, with the stored baselines and with the methods that read it, and no other module keeps a table
by model name, so a fact about a model stays stated once."""

import ast
import json
from pathlib import Path

import pytest

from mechbench.methods.knockout import EDGES
from mechbench.models.discovery_settings import DiscoveryConfig
from mechbench.models.registry import BASE_OF, CIRCUITS, PAPER_MODELS, REGISTRY, TOY_MODELS, ModelSpec, resolve

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "baselines"
SPECS = list(REGISTRY.values())
#: Tables by model name that are code, not facts about the models: the function that trains each toy.
CODE_TABLES = {("mechbench/zoo/train.py", "TRAINERS")}


def _records(claim: str) -> list[dict]:
    return json.loads((BASELINES / f"{claim}.json").read_text())["records"]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_a_registered_spec_states_every_fact_about_its_model(spec: ModelSpec):
    assert spec.kind in ("paper", "toy") and spec.description and spec.paper_name
    assert spec.completeness_iterations >= 1
    assert spec.knockout_edges and len(set(spec.knockout_edges)) == len(spec.knockout_edges)
    assert set(spec.knockout_edges) <= set(EDGES), "knockout edges must name edges of mechbench.methods.knockout"
    if spec.adapter:  # the model under the adapter is registered and carries none itself
        assert spec.weights in REGISTRY and REGISTRY[spec.weights].adapter is None
    if spec.base is not None:  # a fine-tune is compared with a registered base model of its own kind
        assert spec.base in REGISTRY and REGISTRY[spec.base].base is None and REGISTRY[spec.base].kind == spec.kind
    assert not spec.reference or spec.base is not None, "a reference is a fine-tune shown beside its base"
    # a circuit is named after the model it was found on, and the discovery that found it is stated
    assert spec.circuit in (None, spec.name)
    assert (spec.circuit is None) == (spec.discovery is None)
    if spec.discovery is not None:
        assert isinstance(spec.discovery, DiscoveryConfig)
        groups = {step.group for step in spec.discovery.steps}
        assert set(dict(spec.discovery.receiver_k)) == groups and set(dict(spec.discovery.circuit_k)) <= groups
    assert spec.adapter_parameters == 0 or (spec.adapter and spec.architecture)
    if spec.kind == "paper":  # the plan needs the shapes before anyone downloads 7B weights
        assert {"num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"} <= set(
            spec.architecture
        )
    else:  # a shipped toy's config.json is here; its card says what it was trained on
        assert spec.architecture is None and spec.training_data
        assert (Path(resolve(spec.name).weights) / "config.json").is_file()


def test_each_toy_mirrors_a_paper_model_of_the_same_role():
    paper = {REGISTRY[m].paper_name: REGISTRY[m] for m in PAPER_MODELS}
    mirrored = []
    for toy in (REGISTRY[m] for m in TOY_MODELS):
        assert toy.paper_name in paper, f"{toy.name} mirrors no paper model ({toy.paper_name!r})"
        twin = paper[toy.paper_name]
        mirrored.append(twin.name)
        assert (toy.base is None) == (twin.base is None)
        if toy.base is not None:
            assert REGISTRY[toy.base].paper_name == REGISTRY[twin.base].paper_name
        assert (toy.adapter is None) == (twin.adapter is None) and toy.reference == twin.reference
    assert sorted(mirrored) == sorted(PAPER_MODELS)


def test_the_views_are_derived_from_the_specs():
    from mechbench.compare import REFERENCES
    from mechbench.zoo import ZOO

    assert set(REGISTRY) == set(PAPER_MODELS) | set(TOY_MODELS) and ZOO == TOY_MODELS
    assert BASE_OF == {s.name: s.base for s in SPECS if s.base}
    assert {c: s.name for c, s in CIRCUITS.items()} == {s.circuit: s.name for s in SPECS if s.circuit}
    assert REFERENCES == {"llama7b": ("goat7b", "float7b"), "toy-llama": ("toy-goat", "toy-float")}
    assert resolve("goat7b").discovery == REGISTRY["goat7b"].discovery  # resolving keeps every fact


def test_the_specs_agree_with_the_stored_baselines():
    assert {r["circuit"] for r in _records("circuits")} == set(CIRCUITS)
    for r in _records("completeness"):  # the paper's records say how many draws of K they averaged
        if r.get("n_iterations") is not None:
            assert CIRCUITS[r["circuit"]].completeness_iterations == r["n_iterations"], r
    # no knockout record goes unmeasured: every stored curve's edge is one its model's spec runs
    stored = {(r["model"], r["edge"]) for r in _records("attention_knockout")}
    assert {(m, e) for m, e in stored if e not in REGISTRY[m].knockout_edges} == set()
    assert set().union(*(s.knockout_edges for s in SPECS)) == set(EDGES), "an edge no model runs"


def test_the_plan_counts_the_edges_and_draws_the_spec_states(tmp_path):
    from mechbench.plan import Shape, knockout_query_roles, workloads

    assert len(knockout_query_roles("llama7b")) == len(REGISTRY["llama7b"].knockout_edges) == 5
    assert len(knockout_query_roles("toy-llama")) == len(EDGES)
    assert len(knockout_query_roles(str(tmp_path))) == len(EDGES)  # a model registered nowhere runs every edge
    shape = Shape.from_config(REGISTRY["goat7b"].architecture, REGISTRY["goat7b"].adapter_parameters)
    notes = {w.claim: w.note for w in workloads("goat7b", shape, "goat7b")}
    assert notes["completeness"].startswith("20 draws") and notes["attention_knockout"].startswith("5 edges")


# --- no table by model name outside the registry -----------------------------------------------------------


def _tables_by_model_name(source: str, names: set[str]) -> list[tuple[str, int]]:
    """(assigned name or "-", line) of each dict literal whose keys, or set/tuple/list literal whose items, name two
    or more of ``names``: a fact about several models stated outside their specs."""
    tree = ast.parse(source)
    assigned = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            label = ", ".join(t.id for t in targets if isinstance(t, ast.Name)) or "-"
            for inner in ast.walk(node.value):
                assigned.setdefault(id(inner), label)
    found = []
    for node in ast.walk(tree):
        items = (
            node.keys
            if isinstance(node, ast.Dict)
            else node.elts
            if isinstance(node, (ast.Set, ast.Tuple, ast.List))
            else []
        )
        named = {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}
        if len(named) >= 2:
            found.append((assigned.get(id(node), "-"), node.lineno))
    return found


def test_no_module_but_the_registry_keeps_a_table_by_model_name():
    names = set(REGISTRY)
    registry = ROOT / "mechbench" / "models" / "registry.py"
    offenders = []
    for path in sorted([*(ROOT / "mechbench").rglob("*.py"), *(ROOT / "suites").rglob("*.py")]):
        if path == registry:
            continue
        rel = path.relative_to(ROOT).as_posix()
        offenders += [
            f"{rel}:{line} ({label})"
            for label, line in _tables_by_model_name(path.read_text(), names)
            if (rel, label) not in CODE_TABLES
        ]
    assert offenders == [], (
        "per-model facts belong in the model's spec (mechbench/models/registry.py); "
        "found tables by model name at " + ", ".join(offenders)
    )


def test_a_table_by_model_name_is_found():
    names = {"goat7b", "float7b", "llama7b"}
    assert _tables_by_model_name('ITERATIONS = {"goat7b": 20, "float7b": 20}', names) == [("ITERATIONS", 1)]
    assert _tables_by_model_name('def f(c):\n    return 20 if c in ("goat7b", "float7b") else 10', names) == [("-", 2)]
    assert _tables_by_model_name('X = {"goat7b": 20}\nY = ["llama7b"]', names) == []
