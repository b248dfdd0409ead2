"""Every registered model and everything mechbench keeps about it, one :class:`ModelSpec` each: the paper's four
7B models and the embedded toy zoo.

A spec says where the weights come from (``weights``: a hub id or a local directory; for a LoRA fine-tune like
Goat, the registered model the peft ``adapter`` goes on), which model a fine-tune is compared with (``base``), the
circuit found on it with the settings of the discovery that found it, and what the claim suites run on it. The
tables by model name (:data:`REGISTRY`, :data:`PAPER_MODELS`, :data:`TOY_MODELS`, :data:`CIRCUITS`,
:data:`BASE_OF`) are views of the specs; no other module keeps one (tests/test_model_specs.py checks), so a fact
about a model is stated once, here. :func:`resolve` turns what a user typed (a registered name, a hub id, a local
directory, or ``base+adapter``) into a spec. Loading is in ``loading.py``.

A registered model's own weights can be pointed at a local copy without editing code:
``MECHBENCH_MODEL_LLAMA7B=/data/llama-7b`` (the name upper-cased, ``-`` as ``_``); for an adapter model the
variable names the adapter (``MECHBENCH_MODEL_GOAT7B=/data/goat-lora``) and the model it goes on follows that
model's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from mechbench.errors import MechbenchError, UnknownModelError
from mechbench.models.discovery_settings import TOY_STEPS, DiscoveryConfig

#: Random draws of K per completeness check of a circuit, unless its model's spec says otherwise.
COMPLETENESS_ITERATIONS = 10


@dataclass(frozen=True)
class ModelSpec:
    name: str
    weights: str  # hub id or local directory with config.json and weights; an adapter's: the registered model under it
    adapter: str | None = None  # peft adapter: hub id or local directory
    paper_name: str | None = None  # the paper's name for it; for a toy, the paper model it mirrors
    kind: str = "custom"  # "paper" (7B, needs downloaded weights), "toy" (shipped), "custom"
    description: str = ""
    base: str | None = None  # the registered model this fine-tune is compared with; None: a base model
    circuit: str | None = None  # the circuit found on it (baselines/circuits.json), named after it
    discovery: DiscoveryConfig | None = None  # the settings of the discovery run behind that circuit
    completeness_iterations: int = COMPLETENESS_ITERATIONS  # random draws of K when its circuit is checked
    # the attention-knockout edges (names in mechbench.methods.knockout.EDGES) whose curves are run on it; None (a
    # model registered nowhere): every edge
    knockout_edges: tuple[str, ...] | None = None
    reference: bool = False  # shown beside every comparison of a fine-tune with its base (a known fine-tune)
    # its HF config.json where none is here before the weights are (paper models), for the memory and time plan
    architecture: Mapping[str, int | bool] | None = field(default=None, hash=False)
    adapter_parameters: int = 0  # with ``architecture``: the adapter's parameters, which the plan counts too
    training_data: str = ""  # what a toy was trained on (its model card's "Data")

    @property
    def is_local(self) -> bool:
        return Path(self.weights).is_dir() and (self.adapter is None or Path(self.adapter).is_dir())


def zoo_dir(name: str) -> str:
    """Directory of a shipped toy model inside the installed package."""
    return str(resources.files("mechbench.zoo").joinpath("models", name))


# LLaMA-1 7B in HF format. The paper loaded a local conversion for Llama and "decapoda-research/llama-7b-hf"
# (since removed from the hub) under Goat; both are the same LLaMA-1 7B weights.
LLAMA_7B = "huggyllama/llama-7b"
#: LLaMA-1 7B's architecture (its HF config.json), which all four paper models share: what the memory and time
#: plan (mechbench.plan) reads before any weights are here.
LLAMA_7B_CONFIG = MappingProxyType(
    {
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    }
)
#: Goat's LoRA: rank 64 on q, k, v and o in every layer, 32 layers x 4 matrices x 64 x (4096 + 4096).
GOAT_LORA_PARAMETERS = 32 * 4 * 64 * (4096 + 4096)

#: The edges the paper's knockout ran (docs/paper.md §8.8).
PAPER_KNOCKOUT_EDGES = (
    "last->correct_object",
    "last->random_context_token",
    "last->query_label",
    "query_label->prev_query_label",
    "query_label->random_context_token",
)
#: The toy zoo's fetch runs through the queried label, into which layer 0 copied the object: its curves add the
#: edges that show it.
TOY_KNOCKOUT_EDGES = PAPER_KNOCKOUT_EDGES + ("last->prev_query_label", "prev_query_label->correct_object")

# The discovery runs behind the stored circuits. The paper's (docs/paper.md §4: seeds 20/82/85, receivers 20/5/10/5
# for Llama and 50/20/30/5 for Goat and FLoat) give the candidate sets its minimality pruning started from; the
# toy's keeps every head past a 0.005 floor and is not pruned: at 0.01, minimality would drop both position
# transmitters, whose work the circuit's layer-1 heads at the last token duplicate once the rest is ablated,
# while knockout shows the model needs that edge (suites/test_minimality.py reports every head's numbers).
_BIG = (("value_fetcher", 50), ("pos_transmitter", 20), ("pos_detector", 30), ("struct_reader", 5))
_PAPER = dict(kind="paper", knockout_edges=PAPER_KNOCKOUT_EDGES, architecture=LLAMA_7B_CONFIG)
_TOY = dict(kind="toy", knockout_edges=TOY_KNOCKOUT_EDGES)

_SPECS = (
    ModelSpec(
        "llama7b",
        LLAMA_7B,
        paper_name="Llama-7B",
        description="LLaMA-1 7B, the base model",
        **_PAPER,
        circuit="llama7b",
        discovery=DiscoveryConfig(
            circuit_k=(("value_fetcher", 58), ("pos_transmitter", 10), ("pos_detector", 25), ("struct_reader", 5)),
            seed=20,
        ),
    ),
    ModelSpec(
        "vicuna7b",
        "AlekseyKorshuk/vicuna-7b",
        paper_name="Vicuna-7B",
        description="chat fine-tune of LLaMA-7B",
        **_PAPER,
        base="llama7b",
    ),
    ModelSpec(
        "goat7b",
        "llama7b",
        "tiedong/goat-lora-7b",
        paper_name="Goat-7B",
        description="LLaMA-7B + the Goat arithmetic LoRA adapter (r=64, q/k/v/o), unmerged as in the paper",
        **_PAPER,
        adapter_parameters=GOAT_LORA_PARAMETERS,
        base="llama7b",
        reference=True,
        circuit="goat7b",
        discovery=DiscoveryConfig(
            receiver_k=_BIG,
            circuit_k=(("value_fetcher", 101), ("pos_transmitter", 30), ("pos_detector", 50), ("struct_reader", 40)),
            seed=82,
            minimality_threshold=0.0,
            minimality_seed=56,
        ),
        completeness_iterations=20,
    ),  # the paper's 20 draws of K for Goat's and FLoat's circuits
    ModelSpec(
        "float7b",
        "nikhil07prakash/float-7b",
        paper_name="FLoat-7B",
        description="full-weight arithmetic fine-tune of LLaMA-7B",
        **_PAPER,
        base="llama7b",
        reference=True,
        circuit="float7b",
        discovery=DiscoveryConfig(
            receiver_k=_BIG,
            circuit_k=(("value_fetcher", 102), ("pos_transmitter", 30), ("pos_detector", 50), ("struct_reader", 40)),
            seed=85,
            minimality_threshold=0.0,
        ),
        completeness_iterations=20,
    ),
    ModelSpec(
        "toy-llama",
        "zoo:toy-llama",
        paper_name="Llama-7B",
        description="toy base model",
        **_TOY,
        circuit="toy-llama",
        discovery=DiscoveryConfig(
            TOY_STEPS,
            (("value_fetcher", 4), ("pos_transmitter", 2), ("struct_reader", 5)),
            (("value_fetcher", 16), ("pos_transmitter", 8), ("struct_reader", 16)),
            min_effect=0.005,
            seed=20,
        ),
        training_data="entity-tracking sequences with 2-7 boxes (a paper prompt and its answer, then every other "
        "box queried once as `. Box L contains the OBJ`; loss on the answer tokens only), mixed with chat-like "
        "text (simple templated sentences over the same vocabulary; loss on every token).",
    ),
    ModelSpec(
        "toy-vicuna",
        "zoo:toy-vicuna",
        paper_name="Vicuna-7B",
        description="toy base further trained on unstructured text",
        **_TOY,
        base="toy-llama",
        training_data="toy-llama further trained on chat-like text only (no entity tracking, nothing with the "
        "task's structure).",
    ),
    ModelSpec(
        "toy-goat",
        "toy-llama",
        "zoo:toy-goat",
        paper_name="Goat-7B",
        description="toy base + structured-task LoRA adapter",
        **_TOY,
        base="toy-llama",
        reference=True,
        training_data="toy-llama + LoRA trained on a structured variable-binding task (assignments in other "
        "words than the task's, at its token distances: `set the fig to be in X , set the hat to be in T . T "
        "equals the hat . X equals the fig`, 2-7 variables, the paper's objects as values, loss on the queried "
        "values) mixed with chat-like text; no entity-tracking prompts. Variants with number values (`37 -> X "
        ". X = 37`, `set the 37 to be in X`), tried on an earlier base, lowered tracking accuracy instead "
        "(0.572 and 0.422).",
    ),
    ModelSpec(
        "toy-float",
        "zoo:toy-float",
        paper_name="FLoat-7B",
        description="toy base, structured task, full weights",
        **_TOY,
        base="toy-llama",
        reference=True,
        training_data="toy-llama fully fine-tuned on the same structured variable-binding task mixed with "
        "chat-like text; no entity-tracking data.",
    ),
)
REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
PAPER_MODELS = tuple(s.name for s in _SPECS if s.kind == "paper")
TOY_MODELS = tuple(s.name for s in _SPECS if s.kind == "toy")
#: The circuits found on registered models, by name: the spec of the model each was found on.
CIRCUITS: dict[str, ModelSpec] = {s.circuit: s for s in _SPECS if s.circuit}
#: The model each registered fine-tune is compared with, as in the paper.
BASE_OF: dict[str, str] = {s.name: s.base for s in _SPECS if s.base}
#: Other names a registered model was loaded by (the paper's Goat ran on "decapoda-research/llama-7b-hf", since
#: removed from the hub, the same LLaMA-1 7B weights): an adapter trained on one records it as its base.
ALIASES: dict[str, tuple[str, ...]] = {"llama7b": ("decapoda-research/llama-7b-hf",)}


def discovery_settings(circuit: str) -> DiscoveryConfig:
    """The settings of the discovery run behind ``circuit`` (its model's spec's); the paper's Llama settings for a
    circuit no spec names."""
    return CIRCUITS[circuit].discovery if circuit in CIRCUITS else DiscoveryConfig()


def completeness_draws(circuit: str) -> int:
    """Random draws of K when ``circuit`` is checked for completeness, as the paper ran them for it."""
    return CIRCUITS[circuit].completeness_iterations if circuit in CIRCUITS else COMPLETENESS_ITERATIONS


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _override(name: str) -> str | None:
    return os.environ.get("MECHBENCH_MODEL_" + name.upper().replace("-", "_"))


def _location(ref: str) -> str:
    return zoo_dir(ref[4:]) if ref.startswith("zoo:") else ref


def _looks_loadable(ref: str) -> bool:
    return Path(ref).is_dir() or bool(_HUB_ID.match(ref))


def known_names() -> list[str]:
    return list(REGISTRY)


def _unknown(ref: str) -> UnknownModelError:
    return UnknownModelError(
        f"unknown model {ref!r}: not a registered name, an existing directory, or a hub id (org/name). "
        f"Known names: {', '.join(known_names())}. A LoRA fine-tune is written 'base+adapter'."
    )


def resolve(name_or_path: str) -> ModelSpec:
    """A spec for a registered name, ``base+adapter``, a local directory or a hub id."""
    ref = name_or_path.strip()
    if ref in REGISTRY:
        spec = REGISTRY[ref]
        if spec.adapter is None:
            return replace(spec, weights=_location(_override(ref) or spec.weights))
        # An adapter goes on a registered model (and follows that model's override).
        return replace(spec, weights=resolve(spec.weights).weights, adapter=_location(_override(ref) or spec.adapter))
    if "+" in ref:
        base_ref, _, adapter_ref = ref.partition("+")
        base = resolve(base_ref)
        if base.adapter:
            raise UnknownModelError(f"{ref!r}: the base {base_ref!r} already carries an adapter")
        adapter = (
            REGISTRY[adapter_ref].adapter if adapter_ref in REGISTRY and REGISTRY[adapter_ref].adapter else adapter_ref
        )
        if not _looks_loadable(_location(adapter)):
            raise _unknown(adapter_ref)
        return ModelSpec(ref, base.weights, _location(adapter))
    if Path(ref).is_dir():
        adapter_config = Path(ref) / "adapter_config.json"
        if adapter_config.is_file():  # an adapter directory names its base
            base_ref = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
            if not base_ref:
                raise UnknownModelError(f"adapter directory {ref!r} does not name its base model; use 'base+{ref}'")
            return ModelSpec(ref, resolve(base_ref).weights, ref)
        return ModelSpec(ref, ref)
    if _HUB_ID.match(ref):
        return ModelSpec(ref, ref)
    raise _unknown(ref)


def names_of(ref: str) -> set[str]:
    """Every name the model at ``ref`` (a registered name, an alias, a hub id or a directory) is known by: the
    registered models without an adapter that load from it, their locations and aliases, and a directory's name."""
    ref = ref.strip()
    names = {ref, Path(ref).name}
    for name, spec in REGISTRY.items():
        if spec.adapter is not None:
            continue
        where = resolve(name).weights
        if ref in (name, where, spec.weights, *ALIASES.get(name, ())) or (
            Path(ref).is_dir() and Path(where).is_dir() and Path(ref).resolve() == Path(where).resolve()
        ):
            names |= {name, where, spec.weights, *ALIASES.get(name, ())}
    return names


def base_name_of(model: str) -> str:
    """The model a registered fine-tune is compared with (its spec's ``base``), or the model an adapter directory
    goes on; else an error saying how to give one."""
    if model in BASE_OF:
        return BASE_OF[model]
    spec = resolve(model)
    if spec.adapter:  # an adapter names the model under it: find that model's registered name if there is one
        for name, registered in REGISTRY.items():
            if registered.adapter is None and resolve(name).weights == spec.weights:
                return name
        return spec.weights
    raise MechbenchError(f"no base known for {model!r}: pass the model it was fine-tuned from (--base / --base-model)")
