"""Circuit-discovery settings as plain data: the steps of iterated path patching and how many heads each passes on
and keeps (docs/paper.md §4). They sit in the models layer, below the method that runs them
(:mod:`mechbench.methods.discovery`), because every registered model's spec names the settings its own circuit was
found with (:mod:`mechbench.models.registry`).

Each :class:`Step` names a group, where its senders sit, and which earlier group receives what it sends (q or
v at a role). The paper's four steps (:data:`PAPER_STEPS`) chain D -> C -> B -> A. A model may need another
chain: the toy zoo has no position-detector step (the query label's identity is its own embedding, so no head
sits between it and the layer-0 transmitters) and its structure readers write into the label that the value
fetchers read, so :data:`TOY_STEPS` makes the value fetchers the structure readers' receivers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    group: str
    sender_role: str
    receiver_group: str | None = None  # None: senders are scored on the logits
    component: str = "v"  # what the receivers take from the senders: "q" or "v"
    receiver_role: str | None = None
    corrupt: str = "same_role"  # or "random_label": the corrupted value comes from a random box label


PAPER_STEPS = (
    Step("value_fetcher", "last"),
    Step("pos_transmitter", "last", "value_fetcher", "q", "last"),
    Step("pos_detector", "query_label", "pos_transmitter", "v", "query_label"),
    Step("struct_reader", "prev_query_label", "pos_detector", "v", "prev_query_label", corrupt="random_label"),
)
TOY_STEPS = (
    Step("value_fetcher", "last"),
    Step("pos_transmitter", "last", "value_fetcher", "q", "last"),
    Step("struct_reader", "prev_query_label", "value_fetcher", "v", "prev_query_label", corrupt="random_label"),
)
#: Heads kept as the next step's receivers: the paper's Llama run (docs/paper.md §4).
PAPER_RECEIVER_K = {"value_fetcher": 20, "pos_transmitter": 5, "pos_detector": 10, "struct_reader": 5}


@dataclass(frozen=True)
class DiscoveryConfig:
    """How a circuit was (or is to be) found: the steps, heads passed on and kept per group, the noise pairs."""

    steps: tuple[Step, ...] = PAPER_STEPS
    receiver_k: tuple[tuple[str, int], ...] = tuple(PAPER_RECEIVER_K.items())
    circuit_k: tuple[tuple[str, int], ...] = ()  # default: receiver_k
    min_effect: float = 0.0
    n_pairs: int = 300
    seed: int = 20
    num_boxes: int = 7  # boxes per context of the noise pairs (--boxes; the paper's 7)
    # minimality pruning of the candidates (mechbench.methods.minimality; docs/paper.md §4)
    minimality_threshold: float = 0.01
    minimality_examples: int = 100
    minimality_seed: int = 10
    minimality_boot: int = 40  # resamples behind a group's selection-aware error (each can cost new circuit runs)


def config_to_json(config: DiscoveryConfig) -> dict:
    """``config`` as plain JSON (stored with a circuit, so that a claim can re-run the discovery it came from)."""
    from dataclasses import asdict

    out = asdict(config)
    out["receiver_k"], out["circuit_k"] = dict(config.receiver_k), dict(config.circuit_k)
    return out


def config_from_json(data: dict) -> DiscoveryConfig:
    """The :class:`DiscoveryConfig` that :func:`config_to_json` wrote; a field it does not know is an error (settings
    from another version would otherwise be half read)."""
    from dataclasses import fields

    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(DiscoveryConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = dict(data)
    if "steps" in values:
        values["steps"] = tuple(Step(**step) for step in values["steps"])
    for name in ("receiver_k", "circuit_k"):
        if name in values:
            values[name] = tuple((str(g), int(k)) for g, k in dict(values[name]).items())
    return DiscoveryConfig(**values)
