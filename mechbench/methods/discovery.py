"""Circuit discovery by iterated path patching (docs/paper.md §4), with the steps stated as data.

Each :class:`Step` names a group, where its senders sit, and which earlier group receives what it sends (q or
v at a role). The paper's four steps (:data:`PAPER_STEPS`) chain D -> C -> B -> A. A model may need another
chain: the toy zoo has no position-detector step (the query label's identity is its own embedding, so no head
sits between it and the layer-0 transmitters) and its structure readers write into the label that the value
fetchers read, so :data:`TOY_STEPS` makes the value fetchers the structure readers' receivers.

A group keeps its ``top_k`` most negative heads whose score is below ``-min_effect``: with 32 heads in all,
the tail of a top-k list is noise, and a group with no head past the floor is left empty instead of filled
with arbitrary ties. As in the paper's ``minimality.py``, a head in both value fetchers and position
transmitters stays a transmitter.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from mechbench.circuits import GROUP_ROLES, Circuit, HeadGroup
from mechbench.data.counterfactuals import CounterfactualDataset
from mechbench.methods.path_patching import Receivers, path_patching_scores, top_heads
from mechbench.stats import cluster_se_last_axis


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
    # minimality pruning of the candidates (mechbench.methods.minimality; docs/paper.md §4)
    minimality_threshold: float = 0.01
    minimality_examples: int = 100
    minimality_seed: int = 10
    minimality_boot: int = 40  # resamples behind a group's selection-aware error (each can cost new circuit runs)


_BIG = (("value_fetcher", 50), ("pos_transmitter", 20), ("pos_detector", 30), ("struct_reader", 5))
#: The runs behind the stored circuits. The paper's (docs/paper.md §4: seeds 20/82/85, receivers 20/5/10/5 for
#: Llama and 50/20/30/5 for Goat and FLoat) give the candidate sets its minimality pruning started from; the
#: toy's keeps every head past a 0.005 floor and is not pruned: at 0.01, minimality would drop both position
#: transmitters, whose work the circuit's layer-1 heads at the last token duplicate once the rest is ablated,
#: while knockout shows the model needs that edge (suites/test_minimality.py reports every head's numbers).
DISCOVERY = {
    "llama7b": DiscoveryConfig(circuit_k=(("value_fetcher", 58), ("pos_transmitter", 10), ("pos_detector", 25),
                                          ("struct_reader", 5)), seed=20),
    "goat7b": DiscoveryConfig(receiver_k=_BIG, circuit_k=(("value_fetcher", 101), ("pos_transmitter", 30),
                                                          ("pos_detector", 50), ("struct_reader", 40)), seed=82,
                              minimality_threshold=0.0, minimality_seed=56),
    "float7b": DiscoveryConfig(receiver_k=_BIG, circuit_k=(("value_fetcher", 102), ("pos_transmitter", 30),
                                                           ("pos_detector", 50), ("struct_reader", 40)), seed=85,
                               minimality_threshold=0.0),
    "toy-llama": DiscoveryConfig(TOY_STEPS, (("value_fetcher", 4), ("pos_transmitter", 2), ("struct_reader", 5)),
                                 (("value_fetcher", 16), ("pos_transmitter", 8), ("struct_reader", 16)),
                                 min_effect=0.005, seed=20),
}


@dataclass
class Discovery:
    scores: dict[str, torch.Tensor]  # group -> [n_layers, n_heads]
    circuit: Circuit
    se: dict[str, torch.Tensor] | None = None  # group -> each score's cluster-robust standard error

    def to_json(self) -> dict:
        return {"circuit": self.circuit.to_json(), "scores": {g: s.tolist() for g, s in self.scores.items()},
                **({"se": {g: s.tolist() for g, s in self.se.items()}} if self.se else {})}

    def recall(self, heads, group: str, top_k: int, min_effect: float = 0.0, z: float = 3.0) -> float:
        """The share of ``heads`` this run found in ``group``: scored below the cut + ``z`` standard errors (a head
        within sampling error of the cut is a near tie, which fresh pairs reorder at random)."""
        if group not in self.scores or not heads:
            return 0.0
        cut = self.cut(group, top_k, min_effect)
        scores, se = self.scores[group], self.se[group] if self.se else torch.zeros_like(self.scores[group])
        return sum(float(scores[h]) <= cut + z * float(se[h]) for h in heads) / len(heads)

    def cut(self, group: str, top_k: int, min_effect: float = 0.0) -> float:
        """The score a head had to beat to be selected into ``group``: the ``top_k``-th most negative score, or
        the floor ``-min_effect`` where that is stricter."""
        ranked = self.scores[group].flatten().sort().values
        return min(float(ranked[min(top_k, len(ranked)) - 1]), -min_effect)


def select_heads(scores: torch.Tensor, top_k: int, min_effect: float = 0.0) -> tuple[tuple[int, int], ...]:
    """The ``top_k`` most negative heads with a score below ``-min_effect``, most important first."""
    return tuple(h for h in top_heads(scores, top_k) if scores[h] < -min_effect)


def random_label_positions(pairs: CounterfactualDataset, seed: int) -> torch.Tensor:
    """A random box label's position in each corrupted prompt (the paper's structure-reader step)."""
    rng = random.Random(seed)
    src = pairs.source
    boxes = torch.tensor([rng.randrange(src.num_boxes) for _ in range(len(pairs))])
    return src.label_positions[torch.arange(len(pairs)), boxes]


def _progress(log, group: str):
    """A ``progress(done, total)`` for path patching that logs elapsed time and an estimate of what is left."""
    if log is None:
        return None
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (total - done) if done else float("nan")
        log(f"{group}: {done}/{total} sender runs, {elapsed:.0f} s, about {eta:.0f} s left")
    return report


def discover_circuit(model, pairs: CounterfactualDataset, name: str, steps=PAPER_STEPS, receiver_k=None,
                     circuit_k=None, min_effect: float = 0.0, seed: int = 0, log=None, finished=None,
                     on_step=None, fixed_receivers: Circuit | None = None) -> Discovery:
    """Run ``steps`` in order; ``receiver_k[group]`` heads go on as receivers, ``circuit_k[group]`` into the
    circuit (both default to :data:`PAPER_RECEIVER_K`). ``finished``: ``{group: scores}`` of steps already run
    (a resumed run skips them); ``on_step(group, scores, se)`` hears each step as it finishes (to save it).
    ``fixed_receivers``: each step's receivers are that circuit's heads of the receiver group (its leading
    ``receiver_k``) instead of the ones this run selected, so that every step is scored on its own: a near tie at
    one step's cut cannot change which heads the next step sends to."""
    receiver_k = {**PAPER_RECEIVER_K, **(receiver_k or {})}
    circuit_k = {**receiver_k, **(circuit_k or {})}
    scores, se, receivers_of = {}, {}, {}
    finished = finished or {}
    clusters = pairs.base.clusters().numpy()
    for step in steps:
        if step.group in finished:
            scores[step.group], se[step.group] = finished[step.group]
            receivers_of[step.group] = select_heads(scores[step.group], receiver_k[step.group], min_effect)
            if log:
                log(f"{step.group}: resumed from the checkpoint")
            continue
        receivers = None
        if step.receiver_group is not None:
            heads = receivers_of[step.receiver_group]
            if fixed_receivers is not None and step.receiver_group in fixed_receivers.groups:
                heads = fixed_receivers.groups[step.receiver_group].heads[:receiver_k[step.receiver_group]]
            if not heads:  # nothing downstream to receive: the group cannot be found by this step
                scores[step.group] = torch.zeros_like(next(iter(scores.values())))
                se[step.group] = torch.zeros_like(scores[step.group])
                receivers_of[step.group] = ()
                if on_step is not None:
                    on_step(step.group, scores[step.group], se[step.group])
                continue
            receivers = Receivers(heads, step.component, step.receiver_role)
        corrupt = random_label_positions(pairs, seed) if step.corrupt == "random_label" else None
        per_pair = path_patching_scores(model, pairs, step.sender_role, receivers, corrupt_positions=corrupt,
                                        progress=_progress(log, step.group), per_pair=True)
        scores[step.group] = per_pair.mean(-1)
        se[step.group] = torch.from_numpy(cluster_se_last_axis(per_pair.numpy(), clusters)).float()
        receivers_of[step.group] = select_heads(scores[step.group], receiver_k[step.group], min_effect)
        if on_step is not None:
            on_step(step.group, scores[step.group], se[step.group])
        if log:
            log(f"{step.group}: receivers {receivers_of[step.group]}")
    chosen = {g: select_heads(s, circuit_k[g], min_effect) for g, s in scores.items()}
    if "value_fetcher" in chosen and "pos_transmitter" in chosen:
        chosen["value_fetcher"] = tuple(h for h in chosen["value_fetcher"] if h not in chosen["pos_transmitter"])
    circuit = Circuit(name, {g: HeadGroup(g, GROUP_ROLES[g], heads) for g, heads in chosen.items() if heads})
    return Discovery(scores, circuit, se)


_CODE = ("methods/path_patching.py", "methods/discovery.py", "intervene/engine.py", "data/counterfactuals.py",
         "data/dataset.py")


def checkpoint_key(model, name: str, config: DiscoveryConfig) -> dict:
    """What a saved discovery must match to be reused: the settings, the circuit's name, the model (weights,
    config and tokenizer as fingerprinted by the loader) and the code that computes it (a fix to path patching
    must not be hidden by a saved result)."""
    fingerprint = getattr(model, "fingerprint", None) or {}
    package = Path(__file__).resolve().parent.parent
    code = hashlib.sha256(b"".join((package / f).read_bytes() for f in _CODE)).hexdigest()
    return {"name": name, "config": json.loads(json.dumps(asdict(config), default=str)), "code": code,
            "model": {k: fingerprint.get(k) for k in ("weights_sha256", "config_sha256", "dtype", "tokenizer_sha256")}}


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip("/").replace("/", "_"))[-60:]


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def discover(model, name: str, config: DiscoveryConfig, log=None, cache_dir: str | Path | None = None,
             fixed_receivers: Circuit | None = None) -> Discovery:
    """Run ``config`` on ``model`` (a handle): its noise pairs, steps and head counts.

    With ``cache_dir``, each finished step is saved at once to ``<cache_dir>/<name>-<key hash>.json`` (written
    atomically); a later call with the same settings and model resumes after the last saved step, and a
    finished discovery is read back without running anything (the path-patching claim and minimality share
    one). A file made with other settings or another model has another hash and is never read.
    """
    from mechbench.data.counterfactuals import noise_pairs

    finished, on_step, path = {}, None, None
    if cache_dir is not None:
        key = checkpoint_key(model, name, config)
        if fixed_receivers is not None:
            key["fixed_receivers"] = fixed_receivers.to_json()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"{_safe(name)}-{digest}.json"
        saved = {"key": key, "steps": {}}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("key") == key:
                    saved = data
                    finished = {g: (torch.tensor(v["scores"]), torch.tensor(v["se"]))
                                for g, v in data["steps"].items()}
                elif log:
                    log(f"{path} was made with other settings or another model; starting fresh")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if log:
                    log(f"{path} is unreadable (cut short?); starting fresh")
        elif log:
            others = sorted(Path(cache_dir).glob(f"{_safe(name)}-*.json")) if Path(cache_dir).is_dir() else []
            if others:
                log(f"no checkpoint matches these settings and this model ({len(others)} for other settings or "
                    f"models in {cache_dir}); starting fresh")

        def on_step(group: str, scores: torch.Tensor, se: torch.Tensor) -> None:
            saved["steps"][group] = {"scores": scores.tolist(), "se": se.tolist()}
            _write_json_atomic(path, saved)
            if log:
                log(f"{group}: saved to {path}")

    pairs = noise_pairs(model.tokenizer, config.n_pairs, seed=config.seed)
    return discover_circuit(model, pairs, name, config.steps, dict(config.receiver_k), dict(config.circuit_k) or None,
                            config.min_effect, seed=config.seed, log=log, finished=finished, on_step=on_step,
                            fixed_receivers=fixed_receivers)


def discovery_of_claims(model, name: str, seed: int, cache_dir: str | Path, fixed_receivers: Circuit,
                        log=None) -> tuple[DiscoveryConfig, Discovery]:
    """The one discovery the claims share (path patching's recall, minimality's candidates) for circuit ``name``
    on its own model at ``--seed`` (0: the stored run's own noise pairs; s: its seed + s), each step sending to
    the stored circuit's receivers, saved under ``cache_dir`` and read back by whichever claim comes second."""
    config = replace(DISCOVERY[name], seed=DISCOVERY[name].seed + seed)
    return config, discover(model, name, config, log=log, cache_dir=cache_dir, fixed_receivers=fixed_receivers)
