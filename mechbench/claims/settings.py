"""What a run of the claims was asked for (:class:`Settings`): the models, their base, the circuits, device, sample
limit, seed, baseline and results directories. The pytest plugin builds it from its options (mechbench/options.py,
the table the ``mechbench`` command shares: a relative ``results_dir`` is relative to the current directory) when
a session first uses mechbench; a claim's measurement reads it through its :class:`mechbench.claims.run.Run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechbench.claims.spec import derived_seed
from mechbench.errors import MechbenchError
from mechbench.models.registry import REGISTRY, base_name_of


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    base_model: str | None
    baseline_model: str | None
    circuits: tuple[str, ...] | None
    device: str
    dtype: str
    limit: int | None
    seed: int
    baselines_dir: Path
    update_baselines: bool
    results_dir: Path
    require_models: bool
    compared: tuple[str, ...] = ()  # models in comparison mode (mechbench.compare)
    quick: bool = False
    references: tuple[str, ...] | None = None
    circuit_files: dict = None  # circuit name -> the JSON file it was loaded from (--circuit FILE)
    allow_pickle: bool = False
    paper_compat_o_proj: bool = False
    force_baselines: bool = False
    bos: str = "auto"
    drop_multi_token: bool = False
    staging: object = None  # mechbench.baselines.Staging of an --update-baselines run
    batch_size: int = 50
    boxes: int = 7  # --boxes: boxes per context of every prompt built (chance 1/boxes)
    tokenizer: str | None = None  # --tokenizer: the tokenizer loaded instead of the model's own
    claims: tuple[str, ...] | None = None  # --claim: the claims whose tests run (None: all)
    device_map: str | None = None  # --device-map: accelerate's placement by name, or a JSON file of one

    def size(self, claim, name: str, default: int | None = None) -> int:
        """Sample size ``name`` of ``claim`` (a :class:`mechbench.claims.Claim`) under --limit: the claim's spec
        says how (its main size becomes the limit, the others scale with it)."""
        return claim.size(name, self.limit, default)

    def derived_seed(self, offset: int = 0, draw: int | None = None) -> int:
        """A sampler's seed under --seed (:func:`mechbench.claims.derived_seed`, the one rule)."""
        return derived_seed(self.seed, offset, draw)

    def base_of(self, model: str) -> str | None:
        if self.base_model:
            return self.base_model
        try:
            return base_name_of(model)
        except MechbenchError:
            return None

    def circuits_for(self, model: str) -> tuple[str, ...]:
        """The circuits evaluated on ``model``: --circuit, else the one discovered on its base (the paper
        evaluates the Llama-7B circuit on all four models), or on the model itself where it has no base: a
        registered model's, else one stored in the baselines directory under a name the model is known by
        (:func:`mechbench.circuits.stored_circuit_name`, as compare and plan find it)."""
        if self.circuits:
            return self.circuits
        owner = self.base_of(model) or model
        base = REGISTRY.get(owner)
        if base is not None and base.circuit:
            return (base.circuit,)
        from mechbench.circuits import stored_circuit_name

        found = stored_circuit_name(owner, self.baselines_dir)
        return (found,) if found else ()
