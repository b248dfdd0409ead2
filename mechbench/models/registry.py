"""Named models: the paper's four 7B models and the embedded toy zoo, behind one registry.

A :class:`ModelSpec` says where the weights come from (a hub id or a local directory) and, for a LoRA
fine-tune like Goat, which peft adapter goes on top. :func:`resolve` turns what a user typed (a registered
name, a hub id, a local directory, or ``base+adapter``) into a spec. Loading is in ``loading.py``.

A registered model's own weights can be pointed at a local copy without editing code:
``MECHBENCH_MODEL_LLAMA7B=/data/llama-7b`` (the name upper-cased, ``-`` as ``_``); for an adapter model the
variable names the adapter (``MECHBENCH_MODEL_GOAT7B=/data/goat-lora``) and its base follows the base's.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from mechbench.errors import UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    base: str  # hub id or local directory with config.json and weights (for an adapter: a registered name)
    adapter: str | None = None  # peft adapter: hub id or local directory
    paper_name: str | None = None
    kind: str = "custom"  # "paper" (7B, needs downloaded weights), "toy" (shipped), "custom"
    description: str = ""

    @property
    def is_local(self) -> bool:
        return Path(self.base).is_dir() and (self.adapter is None or Path(self.adapter).is_dir())


def zoo_dir(name: str) -> str:
    """Directory of a shipped toy model inside the installed package."""
    return str(resources.files("mechbench.zoo").joinpath("models", name))


# LLaMA-1 7B in HF format. The paper loaded a local conversion for Llama and "decapoda-research/llama-7b-hf"
# (since removed from the hub) under Goat; both are the same LLaMA-1 7B weights.
LLAMA_7B = "huggyllama/llama-7b"

_PAPER = [
    ModelSpec("llama7b", LLAMA_7B, None, "Llama-7B", "paper", "LLaMA-1 7B, the base model"),
    ModelSpec("vicuna7b", "AlekseyKorshuk/vicuna-7b", None, "Vicuna-7B", "paper", "chat fine-tune of LLaMA-7B"),
    ModelSpec("goat7b", "llama7b", "tiedong/goat-lora-7b", "Goat-7B", "paper",
              "LLaMA-7B + the Goat arithmetic LoRA adapter (r=64, q/k/v/o), unmerged as in the paper"),
    ModelSpec("float7b", "nikhil07prakash/float-7b", None, "FLoat-7B", "paper",
              "full-weight arithmetic fine-tune of LLaMA-7B"),
]
_TOY = [
    ModelSpec("toy-llama", "zoo:toy-llama", None, "Llama-7B (toy)", "toy", "toy base model"),
    ModelSpec("toy-vicuna", "zoo:toy-vicuna", None, "Vicuna-7B (toy)", "toy", "toy base further trained on unstructured text"),
    ModelSpec("toy-goat", "toy-llama", "zoo:toy-goat", "Goat-7B (toy)", "toy", "toy base + structured-task LoRA adapter"),
    ModelSpec("toy-float", "zoo:toy-float", None, "FLoat-7B (toy)", "toy", "toy base, structured task, full weights"),
]
REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _PAPER + _TOY}
#: LLaMA-1 7B's architecture (its HF config.json), which all four paper models share: what the memory and time
#: plan (mechbench.plan) reads before any weights are here. Goat adds a LoRA of rank 64 on q, k, v and o in
#: every layer: 32 layers x 4 matrices x 64 x (4096 + 4096) = 67,108,864 parameters.
LLAMA_7B_CONFIG = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
                   "intermediate_size": 11008, "vocab_size": 32000, "tie_word_embeddings": False}
ARCHITECTURES: dict[str, tuple[dict, int]] = {"llama7b": (LLAMA_7B_CONFIG, 0), "vicuna7b": (LLAMA_7B_CONFIG, 0),
                                              "goat7b": (LLAMA_7B_CONFIG, 32 * 4 * 64 * 8192),
                                              "float7b": (LLAMA_7B_CONFIG, 0)}
PAPER_MODELS = tuple(s.name for s in _PAPER)
TOY_MODELS = tuple(s.name for s in _TOY)
# Which model each fine-tune is compared with, as in the paper.
BASE_OF = {"vicuna7b": "llama7b", "goat7b": "llama7b", "float7b": "llama7b",
           "toy-vicuna": "toy-llama", "toy-goat": "toy-llama", "toy-float": "toy-llama"}

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
            return replace(spec, base=_location(_override(ref) or spec.base))
        # An adapter's base is itself a registered name (and follows that name's override).
        return replace(spec, base=resolve(spec.base).base, adapter=_location(_override(ref) or spec.adapter))
    if "+" in ref:
        base_ref, _, adapter_ref = ref.partition("+")
        base = resolve(base_ref)
        if base.adapter:
            raise UnknownModelError(f"{ref!r}: the base {base_ref!r} already carries an adapter")
        adapter = REGISTRY[adapter_ref].adapter if adapter_ref in REGISTRY and REGISTRY[adapter_ref].adapter else adapter_ref
        if not _looks_loadable(_location(adapter)):
            raise _unknown(adapter_ref)
        return ModelSpec(ref, base.base, _location(adapter))
    if Path(ref).is_dir():
        adapter_config = Path(ref) / "adapter_config.json"
        if adapter_config.is_file():  # an adapter directory names its base
            base_ref = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
            if not base_ref:
                raise UnknownModelError(f"adapter directory {ref!r} does not name its base model; use 'base+{ref}'")
            return ModelSpec(ref, resolve(base_ref).base, ref)
        return ModelSpec(ref, ref)
    if _HUB_ID.match(ref):
        return ModelSpec(ref, ref)
    raise _unknown(ref)
