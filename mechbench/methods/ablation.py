"""Mean ablation and circuit evaluation (docs/paper.md §5).

Means are taken per (token position, head) over the head outputs of the ablation prompts, which is possible
because every prompt of a dataset has the same length. A circuit is evaluated by mean-ablating every head
output except the circuit's heads at their roles: at the earlier query-label occurrence only the structure
readers are kept, at the query label only the position detectors, at the last token the value fetchers and
position transmitters, and nowhere else anything. MLPs and embeddings are untouched.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mechbench.circuits import Circuit, Head, HeadGroup
from mechbench.data.dataset import EntityTrackingDataset
from mechbench.evaluate import top1_correct
from mechbench.intervene import HeadPatch, Interventions, Read, run, run_many


def position_means(model, dataset: EntityTrackingDataset, batch_size: int | None = None) -> torch.Tensor:
    """Mean head output per (layer, position, head): [L, S, H, D]."""
    reads = run(model, dataset.input_ids, read=Read(), batch_size=batch_size).reads
    return torch.stack([reads[layer].mean(0) for layer in sorted(reads)])


def circuit_keep_mask(circuit: Circuit, dataset: EntityTrackingDataset, n_layers: int, n_heads: int) -> torch.Tensor:
    """[L, N, S, H] True where a head output is left alone: circuit heads at their role's position."""
    keep = torch.zeros(n_layers, len(dataset), dataset.seq_len, n_heads, dtype=torch.bool)
    rows = torch.arange(len(dataset))
    for role in circuit.roles:
        pos = dataset.positions(role)
        for layer, head in circuit.heads_at(role):
            keep[layer, rows, pos, head] = True
    return keep


def heads_mask(
    heads_by_role: dict[str, set[Head]], dataset: EntityTrackingDataset, n_layers: int, n_heads: int
) -> torch.Tensor:
    """[L, N, S, H] True at the given heads at their roles' positions."""
    return circuit_keep_mask(
        Circuit("K", {r: HeadGroup(r, r, tuple(hs)) for r, hs in heads_by_role.items()}), dataset, n_layers, n_heads
    )


def mean_ablation_patches(means: torch.Tensor, ablate: torch.Tensor) -> list[HeadPatch]:
    """One patch per layer that sets the head outputs where ``ablate`` ([L, N, S, H]) is True to the mean."""
    n_layers, n, s, h = ablate.shape
    patches = []
    for layer in range(n_layers):
        if ablate[layer].any():
            values = means[layer][None].expand(n, s, h, means.shape[-1])
            patches.append(
                HeadPatch(layer, torch.arange(h), torch.arange(s).expand(n, s), values, ablate[layer].float())
            )
    return patches


def ablated_correct(
    model, dataset: EntityTrackingDataset, means: torch.Tensor, ablate: torch.Tensor, batch_size: int | None = None
) -> torch.Tensor:
    """Bool [N]: right answer with the head outputs where ``ablate`` is True set to their means."""
    logits = run(model, dataset.input_ids, mean_ablation_patches(means, ablate), batch_size=batch_size).last_logits
    return top1_correct(logits, dataset.answer_ids)


def ablated_accuracy(
    model, dataset: EntityTrackingDataset, means: torch.Tensor, ablate: torch.Tensor, batch_size: int | None = None
) -> float:
    return ablated_correct(model, dataset, means, ablate, batch_size).float().mean().item()


def circuit_correct(
    model,
    circuit: Circuit,
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    also_ablate: dict[str, set[Head]] | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Bool [N]: right answer with everything outside ``circuit`` mean-ablated (and ``also_ablate`` too)."""
    n_layers, _, n_heads, _ = means.shape
    circuit.check_fits(n_layers, n_heads)
    keep = circuit_keep_mask(circuit, dataset, n_layers, n_heads)
    if also_ablate:
        keep &= ~heads_mask(also_ablate, dataset, n_layers, n_heads)
    return ablated_correct(model, dataset, means, ~keep, batch_size)


def role_ablation_patches(
    means: torch.Tensor, heads_by_role: dict[str, set[Head]], dataset: EntityTrackingDataset
) -> list[HeadPatch]:
    """Patches that set the given heads at their roles' positions (one per example) to the position's mean."""
    by_layer: dict[int, list[tuple[torch.Tensor, int]]] = {}
    for role, heads in heads_by_role.items():
        pos = dataset.positions(role)
        for layer, head in heads:
            by_layer.setdefault(layer, []).append((pos, head))
    patches = []
    for layer, sites in sorted(by_layer.items()):
        for head in sorted({h for _, h in sites}):  # one patch per head (a head may sit at several roles)
            positions = torch.stack([pos for pos, h in sites if h == head], 1)  # [N, roles]
            patches.append(HeadPatch(layer, torch.tensor([head]), positions, means[layer][positions][:, :, [head]]))
    return patches


def circuit_minus_correct(
    model,
    circuit: Circuit,
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    removals: list[dict[str, set[Head]]],
    batch_size: int | None = None,
) -> list[torch.Tensor]:
    """Bool [N] per removal K (role -> heads): F(C \\ K), as :func:`circuit_correct` with ``also_ablate=K``. Every
    K shares each batch's run of the circuit (everything outside it mean-ablated, the engine's prefix under
    those patches), so each recomputes only from its first removed head's layer and position on."""
    n_layers, _, n_heads, _ = means.shape
    circuit.check_fits(n_layers, n_heads)
    outside = mean_ablation_patches(means, ~circuit_keep_mask(circuit, dataset, n_layers, n_heads))
    outs = run_many(
        model,
        dataset.input_ids,
        [Interventions(role_ablation_patches(means, k, dataset)) for k in removals],
        batch_size,
        common=outside,
        score=lambda logits, rows: top1_correct(logits, dataset.answer_ids[rows]),
    )
    return [out.scores for out in outs]


def model_minus_many(
    model,
    removals: list[dict[str, set[Head]]],
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    batch_size: int | None = None,
) -> list[torch.Tensor]:
    """Bool [N] per removal K: F(M \\ K) (:func:`model_minus_correct`), every K on each batch's clean run."""
    outs = run_many(
        model,
        dataset.input_ids,
        [Interventions(role_ablation_patches(means, k, dataset)) for k in removals],
        batch_size,
        score=lambda logits, rows: top1_correct(logits, dataset.answer_ids[rows]),
    )
    return [out.scores for out in outs]


def circuit_accuracy(
    model,
    circuit: Circuit,
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    also_ablate: dict[str, set[Head]] | None = None,
    batch_size: int | None = None,
) -> float:
    """Accuracy with everything outside ``circuit`` mean-ablated (and ``also_ablate`` too: F(C \\ K))."""
    return circuit_correct(model, circuit, dataset, means, also_ablate, batch_size).float().mean().item()


def model_minus_correct(
    model,
    removed: dict[str, set[Head]],
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Bool [N] of F(M \\ K): the full model with only the heads of ``removed`` mean-ablated at their roles."""
    n_layers, _, n_heads, _ = means.shape
    return ablated_correct(model, dataset, means, heads_mask(removed, dataset, n_layers, n_heads), batch_size)


def model_minus_accuracy(
    model,
    removed: dict[str, set[Head]],
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    batch_size: int | None = None,
) -> float:
    """F(M \\ K): the full model with only the heads of ``removed`` mean-ablated at their roles."""
    return model_minus_correct(model, removed, dataset, means, batch_size).float().mean().item()


def random_circuit(circuit: Circuit, n_layers: int, n_heads: int, rng: random.Random) -> Circuit:
    """Same number of heads per group, drawn uniformly from all heads with replacement (the paper's baseline)."""
    return Circuit(
        f"random-{circuit.name}",
        {
            n: HeadGroup(n, g.role, tuple((rng.randrange(n_layers), rng.randrange(n_heads)) for _ in g.heads))
            for n, g in circuit.groups.items()
        },
    )


@dataclass
class Faithfulness:
    full_accuracy: float
    circuit_accuracy: float
    random_circuit_accuracy: float
    circuit_correct: torch.Tensor | None = None  # bool [N]
    random_correct: torch.Tensor | None = None  # bool [n_random, N]

    @property
    def faithfulness(self) -> float:
        return self.circuit_accuracy / self.full_accuracy if self.full_accuracy else float("nan")


def faithfulness(
    model,
    circuit: Circuit,
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    full_accuracy: float,
    n_random: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
) -> Faithfulness:
    """Circuit accuracy over full-model accuracy, with the mean accuracy of ``n_random`` random circuits."""
    n_layers, _, n_heads, _ = means.shape
    rng = random.Random(seed)
    randoms = (
        torch.stack(
            [
                circuit_correct(
                    model, random_circuit(circuit, n_layers, n_heads, rng), dataset, means, batch_size=batch_size
                )
                for _ in range(n_random)
            ]
        )
        if n_random
        else None
    )
    correct = circuit_correct(model, circuit, dataset, means, batch_size=batch_size)
    return Faithfulness(
        full_accuracy,
        correct.float().mean().item(),
        randoms.float().mean().item() if n_random else 0.0,
        correct,
        randoms,
    )


@dataclass
class Completeness:
    """F(C \\ K) and F(M \\ K) per draw of K; incompleteness is |F(M \\ K) - F(C \\ K)|."""

    circuit_minus_k: list[float]
    model_minus_k: list[float]
    circuit_minus_k_correct: torch.Tensor | None = None  # bool [draws, N]
    model_minus_k_correct: torch.Tensor | None = None  # bool [draws, N]

    @property
    def incompleteness(self) -> list[float]:
        return [abs(m - c) for m, c in zip(self.model_minus_k, self.circuit_minus_k)]


def _by_role(circuit: Circuit, heads: dict[str, set[Head]]) -> dict[str, set[Head]]:
    """Group-keyed heads -> role-keyed heads."""
    out: dict[str, set[Head]] = {}
    for group, hs in heads.items():
        out.setdefault(circuit.groups[group].role, set()).update(hs)
    return out


def completeness(
    model,
    circuit: Circuit,
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    k_method: str = "random_sampling",
    iterations: int = 10,
    group: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> Completeness:
    """``random_sampling``: each circuit head enters K with probability 1/2, ``iterations`` times (the
    paper: 10 for Llama, 20 for Goat and FLoat). ``entire_group``: K is the whole ``group``."""
    rng = random.Random(seed)
    if k_method == "entire_group":
        if group not in circuit.groups:
            raise KeyError(f"entire_group needs one of the circuit's groups: {', '.join(circuit.groups)}")
        draws = [{group: set(circuit.groups[group].heads)}]
    elif k_method == "random_sampling":
        draws = [
            {n: {h for h in g.heads if rng.random() < 0.5} for n, g in circuit.groups.items()}
            for _ in range(iterations)
        ]
    else:
        raise KeyError(f"unknown k_method {k_method!r}; use random_sampling or entire_group")
    by_role = [_by_role(circuit, k) for k in draws]
    c = torch.stack(circuit_minus_correct(model, circuit, dataset, means, by_role, batch_size))
    m = torch.stack(model_minus_many(model, by_role, dataset, means, batch_size))
    return Completeness(c.float().mean(1).tolist(), m.float().mean(1).tolist(), c, m)
