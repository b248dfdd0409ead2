"""Circuit discovery by iterated path patching (docs/paper.md §4), with the steps stated as data.

The settings (:class:`Step`, :class:`DiscoveryConfig`, :data:`PAPER_STEPS`, :data:`TOY_STEPS`) are plain data in
:mod:`mechbench.models.discovery_settings`, re-exported here; the settings of the run behind each stored circuit
are its model's spec's (``mechbench.models.registry.CIRCUITS[name].discovery``).

A group keeps its ``top_k`` most negative heads whose score is below ``-min_effect``: with 32 heads in all,
the tail of a top-k list is noise, and a group with no head past the floor is left empty instead of filled
with arbitrary ties. As in the paper's ``minimality.py``, a head in both value fetchers and position
transmitters stays a transmitter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from mechbench.circuits import GROUP_ROLES, Circuit, HeadGroup
from mechbench.data.counterfactuals import CounterfactualDataset
from mechbench.methods.path_patching import Receivers, path_patching_scores, top_heads

# the settings are data the models layer holds (each spec names its circuit's); callers keep importing them here
from mechbench.models.discovery_settings import PAPER_RECEIVER_K, PAPER_STEPS, TOY_STEPS, DiscoveryConfig, Step  # noqa: F401
from mechbench.results import file_stem, write_json_atomic
from mechbench.stats import cluster_se_last_axis


@dataclass
class Discovery:
    scores: dict[str, torch.Tensor]  # group -> [n_layers, n_heads]
    circuit: Circuit
    se: dict[str, torch.Tensor] | None = None  # group -> each score's cluster-robust standard error

    def to_json(self) -> dict:
        return {
            "circuit": self.circuit.to_json(),
            "scores": {g: s.tolist() for g, s in self.scores.items()},
            **({"se": {g: s.tolist() for g, s in self.se.items()}} if self.se else {}),
        }

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


def discover_circuit(
    model,
    pairs: CounterfactualDataset,
    name: str,
    steps=PAPER_STEPS,
    receiver_k=None,
    circuit_k=None,
    min_effect: float = 0.0,
    seed: int = 0,
    log=None,
    finished=None,
    on_step=None,
    fixed_receivers: Circuit | None = None,
) -> Discovery:
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
                heads = fixed_receivers.groups[step.receiver_group].heads[: receiver_k[step.receiver_group]]
            if not heads:  # nothing downstream to receive: the group cannot be found by this step
                scores[step.group] = torch.zeros_like(next(iter(scores.values())))
                se[step.group] = torch.zeros_like(scores[step.group])
                receivers_of[step.group] = ()
                if on_step is not None:
                    on_step(step.group, scores[step.group], se[step.group])
                continue
            receivers = Receivers(heads, step.component, step.receiver_role)
        corrupt = random_label_positions(pairs, seed) if step.corrupt == "random_label" else None
        per_pair = path_patching_scores(
            model,
            pairs,
            step.sender_role,
            receivers,
            corrupt_positions=corrupt,
            progress=_progress(log, step.group),
            per_pair=True,
        )
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


_CODE = (
    "methods/path_patching.py",
    "methods/discovery.py",
    "intervene/api.py",
    "intervene/frozen.py",
    "intervene/hooks.py",
    "intervene/prefix.py",
    "intervene/requests.py",
    "models/architectures.py",
    "data/counterfactuals.py",
    "data/dataset.py",
)


def checkpoint_key(model, name: str, config: DiscoveryConfig) -> dict:
    """What a saved discovery must match to be reused: the settings, the circuit's name, the model (weights,
    config and tokenizer as fingerprinted by the loader) and the code that computes it (a fix to path patching
    must not be hidden by a saved result)."""
    fingerprint = getattr(model, "fingerprint", None) or {}
    package = Path(__file__).resolve().parent.parent
    code = hashlib.sha256(b"".join((package / f).read_bytes() for f in _CODE)).hexdigest()
    return {
        "name": name,
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "code": code,
        "model": {k: fingerprint.get(k) for k in ("weights_sha256", "config_sha256", "dtype", "tokenizer_sha256")},
    }


def _safe(name: str) -> str:
    return file_stem(name, keep=60)


def checkpoint_path(
    model, name: str, config: DiscoveryConfig, cache_dir: str | Path, fixed_receivers: Circuit | None = None
) -> tuple[dict, Path]:
    """(key, file) of the saved steps of this discovery under ``cache_dir``: ``<name>-<key hash>.json``."""
    key = checkpoint_key(model, name, config)
    if fixed_receivers is not None:
        key["fixed_receivers"] = fixed_receivers.to_json()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return key, Path(cache_dir) / f"{_safe(name)}-{digest}.json"


def saved_steps(data: dict, path: Path, config: DiscoveryConfig, shape=None) -> dict[str, tuple]:
    """``{group: (scores, se)}`` of a checkpoint whose key matches, each step checked before it is trusted: a step
    of the configured steps, scores and standard errors finite and of the model's [layers, heads] shape (of one
    shape across steps where the model's is unknown), and the saved steps selecting some head (a real run on a
    model that does the task does). A file that fails is refused, not resumed into an empty circuit."""
    from mechbench.errors import MechbenchError

    def corrupt(what: str) -> MechbenchError:
        return MechbenchError(
            f"saved discovery {path}: {what}, so it cannot be resumed; delete it to recompute the discovery (rm {path})"
        )

    steps = data.get("steps")
    if not isinstance(steps, dict):
        raise corrupt(f"'steps' is {type(steps).__name__}, not an object of steps")
    known = [step.group for step in config.steps]
    want = (shape.n_layers, shape.n_heads) if shape is not None else None
    finished = {}
    for group, step in steps.items():
        if group not in known:
            raise corrupt(f"step {group!r} is not one of the configured steps ({', '.join(known)})")
        tensors = []
        for field in ("scores", "se"):
            try:
                t = torch.tensor(step[field], dtype=torch.float32)
            except (KeyError, TypeError, ValueError, RuntimeError):
                raise corrupt(f"step {group!r} has no [layers][heads] table of numbers under {field!r}") from None
            want = want or (tuple(t.shape) if t.dim() == 2 else None)
            if tuple(t.shape) != want or not t.numel():
                raise corrupt(
                    f"the {field} of step {group!r} have shape {list(t.shape)}, not the model's "
                    f"[layers, heads]{f' = {list(want)}' if want else ''}"
                )
            if not torch.isfinite(t).all() or (field == "se" and (t < 0).any()):
                raise corrupt(
                    f"the {field} of step {group!r} hold "
                    f"{'non-finite' if not torch.isfinite(t).all() else 'negative'} values"
                )
            tensors.append(t)
        finished[group] = tuple(tensors)
    for step in config.steps:  # steps are saved in order: a step's receivers come from the step before it
        if step.group in finished and step.receiver_group is not None and step.receiver_group not in finished:
            raise corrupt(
                f"step {step.group!r} is saved without step {step.receiver_group!r}, whose heads it was scored on"
            )
    circuit_k = {**PAPER_RECEIVER_K, **dict(config.receiver_k), **dict(config.circuit_k)}
    if finished and not any(select_heads(s, circuit_k.get(g, 1), config.min_effect) for g, (s, _) in finished.items()):
        raise corrupt(
            f"its {len(finished)} saved step(s) select no head (no score below -{config.min_effect:g}: a run "
            f"on a model that does the task finds some; if a fresh run finds none either, the model does "
            f"not do the task)"
        )
    return finished


def discover(
    model,
    name: str,
    config: DiscoveryConfig,
    log=None,
    cache_dir: str | Path | None = None,
    fixed_receivers: Circuit | None = None,
) -> Discovery:
    """Run ``config`` on ``model`` (a handle): its noise pairs, steps and head counts.

    With ``cache_dir``, each finished step is saved at once to ``<cache_dir>/<name>-<key hash>.json`` (written
    atomically); a later call with the same settings and model resumes after the last saved step, and a
    finished discovery is read back without running anything (the path-patching claim and minimality share
    one). A file made with other settings or another model has another hash and is never read; one with this
    discovery's key is checked before it is resumed (:func:`saved_steps`) and refused, naming it, where it is corrupt.
    """
    if cache_dir is None:
        return _discover(model, name, config, log, None, fixed_receivers)
    _, path = checkpoint_path(model, name, config, cache_dir, fixed_receivers)
    # one discovery at a time per checkpoint: a second process (a pytest -n worker, a job of an array sharing the
    # results directory) waits for the first and reads its finished steps back instead of computing them again
    with _locked(path.with_name(path.name + ".lock"), log):
        return _discover(model, name, config, log, cache_dir, fixed_receivers)


@contextlib.contextmanager
def _locked(lock: Path, log=None):
    """An exclusive advisory lock on ``lock`` (made if missing) for the block; none where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process at a time there
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"{lock.name}: another process is running this discovery; waiting to read its steps back")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _discover(model, name, config, log, cache_dir, fixed_receivers) -> Discovery:
    from mechbench.data.counterfactuals import noise_pairs

    finished, on_step, path = {}, None, None
    if cache_dir is not None:
        key, path = checkpoint_path(model, name, config, cache_dir, fixed_receivers)
        saved = {"key": key, "steps": {}}
        data = None
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                if log:
                    log(f"{path} is unreadable (cut short?); starting fresh")
        if isinstance(data, dict) and data.get("key") == key:
            finished = saved_steps(data, path, config, getattr(model, "shape", None))
            saved = data
        elif data is not None and log:
            log(f"{path} was made with other settings or another model; starting fresh")
        elif log and not path.is_file():
            others = sorted(Path(cache_dir).glob(f"{_safe(name)}-*.json")) if Path(cache_dir).is_dir() else []
            if others:
                log(
                    f"no checkpoint matches these settings and this model ({len(others)} for other settings or "
                    f"models in {cache_dir}); starting fresh"
                )

        def on_step(group: str, scores: torch.Tensor, se: torch.Tensor) -> None:
            saved["steps"][group] = {"scores": scores.tolist(), "se": se.tolist()}
            write_json_atomic(path, saved, indent=None)
            if log:
                log(f"{group}: saved to {path}")

    pairs = noise_pairs(model.tokenizer, config.n_pairs, num_boxes=config.num_boxes, seed=config.seed)
    return discover_circuit(
        model,
        pairs,
        name,
        config.steps,
        dict(config.receiver_k),
        dict(config.circuit_k) or None,
        config.min_effect,
        seed=config.seed,
        log=log,
        finished=finished,
        on_step=on_step,
        fixed_receivers=fixed_receivers,
    )


def discovery_of_claims(
    model,
    name: str,
    seed: int,
    cache_dir: str | Path,
    fixed_receivers: Circuit,
    log=None,
    n_pairs: int | None = None,
    num_boxes: int = 7,
) -> tuple[DiscoveryConfig, Discovery]:
    """The one discovery the claims share (path patching's recall, minimality's candidates) for circuit ``name``
    on its own model, with the settings it was found with (its model's spec's, or those stored with it), at ``--seed`` (0: the stored run's own noise pairs; s:
    its seed + s, as mechbench.claims.derived_seed offsets a sampler), each step sending to the stored circuit's
    receivers, saved under ``cache_dir`` and read back by whichever claim comes second. ``n_pairs``: noise pairs
    per step (default the stored run's; ``--limit`` sets it). ``num_boxes``: boxes per context of its noise pairs
    (``--boxes``; a discovery at another number is saved apart, its settings being part of the checkpoint's key)."""
    stored = fixed_receivers.discovery_settings()  # its model's spec's, or the settings stored with it
    if stored is None:
        from mechbench.errors import MechbenchError

        raise MechbenchError(
            f"circuit {name!r} carries no discovery settings (a hand-written circuit?): store it with "
            f"`mechbench discover MODEL --store` or `mechbench baseline MODEL`, which keep them"
        )
    config = replace(stored, seed=stored.seed + seed, n_pairs=n_pairs or stored.n_pairs, num_boxes=num_boxes)
    return config, discover(model, name, config, log=log, cache_dir=cache_dir, fixed_receivers=fixed_receivers)
